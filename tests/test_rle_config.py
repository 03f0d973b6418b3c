import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gnhub import ModelConfig
from gnhub.errors import GnhubError
from gnhub.layout import read_config, write_config
from gnhub.rle import decode, encode


def test_rle_known_string():
    # column-major runs of [[0, 1], [1, 1]]: one 0, three 1s -> pycocotools writes "13"
    assert encode(np.array([[0, 1], [1, 1]], bool)) == {"size": [2, 2], "counts": "13"}
    assert encode(np.ones((1, 3), bool))["counts"] == "03"


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_rle_round_trip(mask):
    assert np.array_equal(decode(json.loads(json.dumps(encode(mask)))), mask)


def test_long_runs_round_trip():
    mask = np.zeros((300, 400), bool)
    mask[10:290, 5:395] = True
    mask[100:120, 100:300] = False
    assert np.array_equal(decode(encode(mask)), mask)


def test_config_round_trip(tmp_path):
    config = ModelConfig(name="x", classes=("a", "b"))
    config.backbone.depth = 101
    config.preprocess.mean = (1.0, 2.0, 3.0)
    write_config(tmp_path, config)
    assert read_config(tmp_path / "config.json") == config


def test_config_rejects_unknown_fields_and_versions(tmp_path):
    data = ModelConfig().to_dict()
    data["backbone"]["depht"] = 50
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(GnhubError, match="depht"):
        read_config(tmp_path / "a.json")
    data = ModelConfig().to_dict()
    data["format_version"] = 99
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(GnhubError, match="format_version"):
        read_config(tmp_path / "b.json")
