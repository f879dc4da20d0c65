"""Which Keras tests are expected not to pass with kbm's classes, and why.

Keys are `"<harness file stem>::<TestCase>::<test>"`; a trailing `*` matches
the parameterized variants of one test. A Keras test that is listed here and
passes is reported as XPASS: delete its entry.
"""

import fnmatch

import pytest

# Tests that inspect Keras-private internals kbm's class legitimately does
# differently. Each entry carries its reason.
KERAS_PRIVATE = {}

# `Dense.quantize` raises NotImplementedError for every subclass of Dense
# (`type(self) is not Dense`), so FusedDense has no quantized modes yet.
# Owned by the quantization work, which will implement
# `FusedDense.quantize` (and its int8/int4/float8/GPTQ/AWQ variants).
QUANTIZATION = {
    f"dense_test::DenseTest::{name}": "FusedDense has no quantized modes yet"
    for name in (
        "test_awq_kernel_packing",
        "test_awq_serialization",
        "test_dense_int4_custom_quantizer",
        "test_dense_int8_custom_quantizer",
        "test_dense_int8_weight_only_quantizer",
        "test_dense_quantize_config_int4",
        "test_dense_quantize_config_int8",
        "test_dense_quantize_config_int8_weight_only",
        "test_gptq_kernel_packing",
        "test_gptq_serialization",
        "test_int4_awq_kernel_returns_unpacked_form",
        "test_int4_block_size_serialization_*",
        "test_int4_block_size_with_lora_*",
        "test_int4_gptq_kernel_returns_unpacked_form",
        "test_int4_grouped_vs_perchannel_scale_shapes",
        "test_int4_kernel_returns_unpacked_form",
        "test_int4_perchannel_no_g_idx",
        "test_int4_quantization_block_size_*",
        "test_int4_subchannel_g_idx_created_*",
        "test_int4_subchannel_g_idx_serialization",
        "test_quantize_by_setting_dtype_policy_*",
        "test_quantize_float8*",
        "test_quantize_int_*",
        "test_quantize_lora_integration_*",
        "test_quantize_when_already_quantized_*",
    )
}


def _lookup(table, key):
    for pattern, reason in table.items():
        if fnmatch.fnmatchcase(key, pattern):
            return reason
    return None


def marker_for(nodeid):
    """The pytest marker for the Keras test `nodeid`, or None."""
    key = nodeid.rsplit("/", 1)[-1].replace(".py::", "::", 1)
    reason = _lookup(KERAS_PRIVATE, key)
    if reason is not None:
        return pytest.mark.skip(reason=f"inspects Keras internals: {reason}")
    reason = _lookup(QUANTIZATION, key)
    if reason is not None:
        return pytest.mark.xfail(reason=reason, strict=True)
    return None
