"""`keras-bigmodels-saved-model-cli`: TensorFlow's saved_model_cli with the
keras_bigmodels op library loaded.

A SavedModel exported with `stock_ops=False` holds `Kbm>` ops, which plain
`saved_model_cli run` cannot load ("Op type not registered"). This command
loads the op library through the package's loader (same checks: built for
this TensorFlow, not disabled) and then hands its arguments unchanged to
`tensorflow.python.tools.saved_model_cli.main`:

    keras-bigmodels-saved-model-cli show --dir serving/1 --all
    keras-bigmodels-saved-model-cli run --dir serving/1 --tag_set serve \\
        --signature_def serving_default --input_exprs 'features=[[0.1, ...]]'

If the library cannot be loaded the reason is printed to stderr and the
command still runs (stock-ops SavedModels need no library).
"""

import sys


def load_op_library():
    """Loads the op library; returns the reason it is unavailable, or None."""
    from keras_bigmodels.ops import _loader

    lib, reason = _loader.load_library()
    return None if lib is not None else reason


def main(argv=None):
    """Runs saved_model_cli with `argv` (default: the command line).

    Args:
        argv: Arguments after the program name, e.g. `["show", "--dir",
            "serving/1"]`. Defaults to `sys.argv[1:]`.

    Returns:
        saved_model_cli's exit status (it exits through absl's `app.run`).
    """
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    reason = load_op_library()
    if reason is not None:
        print(
            "keras-bigmodels-saved-model-cli: the keras_bigmodels op library "
            f"is not loaded ({reason}); SavedModels with Kbm> ops will fail "
            "to load.",
            file=sys.stderr,
        )
    from tensorflow.python.tools import saved_model_cli

    try:
        saved_model_cli.main()
    except SystemExit as e:  # absl's app.run always exits.
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
