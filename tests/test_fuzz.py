"""Property-based: random bytes and random JSON thrown at the split and config loaders raise
nothing but diffaudit's own errors (a DiffauditError with a one-line message), never a crash."""
import dataclasses
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from diffaudit.audit.plan import AuditConfig, from_dict, load_config  # noqa: E402
from diffaudit.data import load_split, read_split  # noqa: E402
from diffaudit.errors import DiffauditError  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, database=None)
FIELDS = [f.name for f in dataclasses.fields(AuditConfig)]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats() | st.text(max_size=8))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=16)
# Values a config field might plausibly get wrong: right type, wrong range, wrong shape, non-finite.
field_values = (json_values | st.integers(-5, 1000) | st.lists(st.integers(-5, 1000), max_size=5)
                | st.sampled_from([float("nan"), float("inf"), 1e309, -0.0, "sima", ["sima", "loss"], {"sima": [0, 10]},
                                   {"sima": [1e309]}, {"sima": ["x"]}, {"nope": [1]}, {"sima": []}]))
near_configs = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=5)
near_splits = st.fixed_dictionaries({
    "format": st.just("diffaudit.split/1"), "role": st.sampled_from(["members", "heldout"]),
    "seed": st.integers(), "source": st.sampled_from([{"spec": "digits"}, {"spec": "npz:/nonexistent.npz"},
                                                      {"spec": "folder:/nonexistent"}, {"spec": "folder:/etc/hostname"}, {"spec": ""}]) | json_values,
    "items": st.lists(st.fixed_dictionaries({"key": st.sampled_from(["0", "1796", "1797", "-1", "01", "../x"]) | json_values,
                                             "sha256": st.just("0" * 64) | json_values}), max_size=3),
})


def _only_our_errors(fn, *args):
    try:
        fn(*args)
    except DiffauditError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), repr(e)  # one line for the CLI


@FUZZ
@given(content=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())
       | near_splits.map(lambda v: json.dumps(v).encode()))
def test_split_loaders_raise_only_diffaudit_errors(tmp_path_factory, content):
    p = tmp_path_factory.mktemp("split") / "s.json"
    p.write_bytes(content)
    _only_our_errors(read_split, p)
    _only_our_errors(load_split, p)


@FUZZ
@given(d=json_values | near_configs)
def test_config_from_dict_raises_only_diffaudit_errors(d):
    _only_our_errors(from_dict, d)


@FUZZ
@given(content=st.binary(max_size=300) | (json_values | near_configs).map(lambda v: json.dumps(v).encode())
       | st.text(max_size=200).map(str.encode), suffix=st.sampled_from([".json", ".toml"]))
def test_config_files_raise_only_diffaudit_errors(tmp_path_factory, content, suffix):
    p = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    p.write_bytes(content)
    _only_our_errors(load_config, p)


def test_a_config_that_loads_round_trips():
    """The properties above are not vacuous: valid input does load, and to the same config."""
    cfg = from_dict({"k": 30, "k_sweep": [0, 30], "timesteps": {"sima": [0, 10]}, "seed": 3})
    assert from_dict(cfg.to_dict()) == cfg and cfg.grid("sima") == [0, 10]
