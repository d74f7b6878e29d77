"""CF decoding/encoding: fill values, packing, valid ranges, round trips."""

import numpy as np
import pytest

from ctxq_cli.cf import Encoding, decode, encode


def test_packed_int16_round_trip():
    rng = np.random.default_rng(0)
    enc = Encoding("int16", fill_value=-32767, scale_factor=0.01, add_offset=15.0)
    values = (np.float32(15.0) + np.float32(0.01) * rng.integers(-3000, 3000, (4, 5, 6)))
    missing = rng.random(values.shape) < 0.3
    raw = encode(values, missing, enc)
    assert raw.dtype == np.int16
    dec = decode(raw, enc.attrs)
    np.testing.assert_array_equal(dec.missing, missing)
    np.testing.assert_allclose(dec.values[~missing], values[~missing], atol=1e-5)
    assert dec.values.dtype == np.float32
    assert np.all(dec.values[missing] == 0)


def test_fill_and_missing_value_are_a_union_and_nan_inf_missing():
    raw = np.array([1.0, -999.0, 1e20, np.nan, np.inf, 2.0], dtype=np.float32)
    dec = decode(raw, {"_FillValue": np.float32(-999.0), "missing_value": np.float32(1e20)})
    np.testing.assert_array_equal(dec.missing, [False, True, True, True, True, False])
    np.testing.assert_array_equal(dec.values, [1, 0, 0, 0, 0, 2])


def test_missing_value_list_and_default_fill():
    raw = np.array([1, -1, -2, 5, -32767], dtype=np.int16)
    dec = decode(raw, {"missing_value": np.array([-1, -2], dtype=np.int16)})
    np.testing.assert_array_equal(dec.missing, [False, True, True, False, False])
    dec = decode(raw, {})  # no declared fill: the netCDF default for int16 is missing
    np.testing.assert_array_equal(dec.missing, [False, False, False, False, True])


def test_valid_range_in_packed_and_physical_units():
    raw = np.array([0, 10, 100, 200], dtype=np.int16)
    packed = decode(raw, {"scale_factor": np.float32(0.5),
                          "valid_range": np.array([5, 150], dtype=np.int16)})
    np.testing.assert_array_equal(packed.missing, [True, False, False, True])
    physical = decode(raw, {"scale_factor": np.float32(0.5),
                            "valid_max": np.float32(60.0)})
    np.testing.assert_array_equal(physical.missing, [False, False, False, True])
    assert physical.counts["out_of_range"] == 1


def test_float64_keeps_precision():
    raw = np.array([0.1, 1 / 3], dtype=np.float64)
    dec = decode(raw, {})
    assert dec.values.dtype == np.float64
    np.testing.assert_array_equal(dec.values, raw)


def test_float32_values_are_bit_identical():
    raw = np.random.default_rng(1).normal(size=100).astype(np.float32)
    dec = decode(raw, {"_FillValue": np.float32(-999)})
    assert dec.values.tobytes() == raw.tobytes()


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_byte_types_have_no_default_fill(dtype):
    raw = np.array([0, 1, 127], dtype=dtype)
    assert not decode(raw, {}).missing.any()


def test_double_missing_value_on_float32_variable_matches():
    raw = np.array([1e20, 3.0], dtype=np.float32)
    dec = decode(raw, {"missing_value": np.float64(1e20)})
    np.testing.assert_array_equal(dec.missing, [True, False])


def test_unsigned_bytes_and_signed_bounds_on_unsigned():
    raw = np.array([-56, 10, -1], dtype=np.int8)   # 200, 10, 255 unsigned
    dec = decode(raw, {"_Unsigned": "true", "_FillValue": np.int8(-1)})
    np.testing.assert_array_equal(dec.values, [200, 10, 0])
    np.testing.assert_array_equal(dec.missing, [False, False, True])
    dec = decode(np.array([5, 200], dtype=np.uint8),
                 {"scale_factor": np.float32(0.1), "valid_range": np.array([0, 100], np.int16)})
    np.testing.assert_array_equal(dec.missing, [False, True])  # packed units


def test_no_default_fill_when_asked_and_float16():
    raw = np.array([-32767, 1], dtype=np.int16)
    assert not decode(raw, {}, default_fill=False).missing.any()
    assert not decode(np.array([1, 2], dtype=np.float16), {}).missing.any()
