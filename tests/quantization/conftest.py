"""Marks the costliest combinations of the quantization tests `slow`.

Every mode still runs on every model kind in the default run (`make
test`); these repeat a mode on the largest models (a BERT encoder, an
attention block), whose `.keras` round trips, fresh processes and training
take tens of seconds each. `make test-slow` runs them.
"""

import pytest

SLOW = {
    "test_round_trip_with_kernels_disabled[int4_weight_only]",
    "test_keras_round_trip[bert-int8_weight_only]",
    "test_keras_round_trip[bert-int4_weight_only]",
    "test_keras_round_trip[attention-int8_weight_only]",
    "test_keras_round_trip[attention-int4_weight_only]",
    "test_bert_encoder_quantizes_and_runs[int8_weight_only]",
    "test_bert_encoder_quantizes_and_runs[int4_weight_only]",
    "test_fit_then_convert[transformer-int8_weight_only]",
    "test_fit_then_convert[transformer-int4_weight_only]",
    "test_modes_close_to_float[attention-int8_weight_only]",
    "test_modes_close_to_float[attention-int4_weight_only]",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/quantization/" in item.nodeid and item.name in SLOW:
            item.add_marker(pytest.mark.slow)
