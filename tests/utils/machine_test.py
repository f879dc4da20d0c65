import pytest

from keras_bigmodels.utils import matmul_gflops


def test_matmul_gflops():
    figure = matmul_gflops(seconds=0.05, size=64)
    assert figure.gflops > 0
    assert figure.size == 64
    assert figure.calls >= 5
    assert figure.threads >= 1
    line = str(figure)
    assert line.startswith(f"{figure.gflops:.0f} GFLOP/s float32 matmul")
    assert "64x64x64" in line and figure.cpu in line


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seconds": 0}, "seconds must be positive"),
        ({"size": 0}, "size must be a positive integer. Received: size=0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        matmul_gflops(**kwargs)
