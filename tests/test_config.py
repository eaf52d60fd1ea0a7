import pytest

from focus_core import FocusConfig, FocusConfigError


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_size": 0},
        {"chunk_size": -5},
        {"chunk_size": 1.5},
        {"local_window": 0},
        {"dynamic_prompt_len": 600, "local_window": 512},
        {"aggregation": "mean"},
        {"max_new_tokens": 0},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"seed": -1},
        {"stop": [""]},
        {"stop": [3]},
        {"native_window": 1},
        {"memory_budget_bytes": 0},
        {"progress": "yes"},
    ],
)
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(FocusConfigError):
        FocusConfig(**kwargs)


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError) as err:
        FocusConfig(local_window=16, dynamic_prompt_len=32)
    assert err.value.setting == "dynamic_prompt_len"


def test_stop_is_normalised_to_a_tuple():
    assert FocusConfig(stop="###").stop == ("###",)
    assert FocusConfig(stop=["a", "b"]).stop == ("a", "b")
    assert FocusConfig(stop=None).stop == ()


def test_replace_validates_and_rejects_unknown_names():
    cfg = FocusConfig()
    assert cfg.replace(chunk_size=256).chunk_size == 256
    with pytest.raises(FocusConfigError) as err:
        cfg.replace(chunk_sz=256)
    assert err.value.setting == "chunk_sz"
    with pytest.raises(FocusConfigError) as err:
        cfg.replace(chunk_size=0)
    assert err.value.setting == "chunk_size"


def test_window_check_names_the_overflow():
    with pytest.raises(FocusConfigError) as err:
        FocusConfig(chunk_size=1000, dynamic_prompt_len=64, max_new_tokens=16).check_window(1024)
    assert err.value.setting == "chunk_size" and "1024" in str(err.value)  # the window overflowed


def test_the_wrappers_settings_are_focusconfig_settings_of_the_same_type():
    import dataclasses
    import typing

    from focusllm_integrations.common import GENERATION_FIELDS, FocusFields

    hints = typing.get_type_hints(FocusConfig)
    declared = {f.name for f in dataclasses.fields(FocusConfig)}
    assert set(FocusFields.model_fields) | set(GENERATION_FIELDS) | {"stop"} == declared  # every setting, once
    for name, field in FocusFields.model_fields.items():
        assert field.default is None  # None keeps FocusConfig's default: one default per setting
        allowed = set(typing.get_args(field.annotation)) - {type(None)}
        assert allowed <= set(typing.get_args(hints[name])) | {hints[name], str}, name
