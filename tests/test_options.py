"""The option dataclasses: one error for every bad field, unknown keys refused, and the schemas
(pydantic, argparse) derived from the same fields."""

import argparse
import dataclasses
import inspect

import pydantic
import pytest

from synclearn.options import (GOVERNOR_FIELDS, REHEARSAL_FIELDS, AttachOptions, LearnerOptions, ServeOptions,
                               add_arguments, given, pydantic_model)


def test_attach_defaults_rehearse_each_new_turn_until_learned():
    opts = AttachOptions()
    assert (opts.new_repeats, opts.learned_loss, opts.min_gain) == (12, 0.02, 0.1)
    assert (opts.batch_size, opts.replay_ratio, opts.poll_s) == (8, 0.75, 0.05)
    assert set(REHEARSAL_FIELDS) | set(GOVERNOR_FIELDS) == set(AttachOptions.field_names())


def test_every_bad_field_in_one_error():
    with pytest.raises(ValueError) as err:
        AttachOptions(batch_size=0, replay_ratio=1.5, on_error="retry", poll_s=float("nan"), idle_only=1)
    message = str(err.value)
    for part in ("batch_size=0", "replay_ratio=1.5", "on_error='retry'", "poll_s=nan", "idle_only=1",
                 "'continue', 'stop'"):
        assert part in message
    with pytest.raises(ValueError, match=r"update='dense'.*betas=\(1.5, 0.1\)"):
        LearnerOptions(update="dense", betas=(1.5, 0.1))
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        ServeOptions(max_new_tokens=0)


def test_from_dict_refuses_unknown_keys_naming_them():
    with pytest.raises(ValueError, match=r"unknown AttachOptions fields \['bach_size'\]"):
        AttachOptions.from_dict({"bach_size": 4})
    assert AttachOptions.from_dict({"batch_size": 4}).batch_size == 4
    assert AttachOptions().replace(max_steps=3).max_steps == 3
    with pytest.raises(ValueError, match="unknown"):
        AttachOptions().replace(nope=1)


def test_yaml_lists_become_betas_tuples():
    assert LearnerOptions(betas=[0.9, 0.99]).betas == (0.9, 0.99)


def test_serve_attach_takes_only_governor_fields():
    assert ServeOptions(attach={"poll_s": 0.1}).attach_options() == {"poll_s": 0.1}
    with pytest.raises(ValueError, match=r"attach has \['batch_size'\].*memory setup"):
        ServeOptions(attach={"batch_size": 2})
    with pytest.raises(ValueError, match="poll_s=-1"):
        ServeOptions(attach={"poll_s": -1})


def test_attach_options_are_learner_handle_keywords():
    from synclearn.learn.sync import LearnerHandle

    params = inspect.signature(LearnerHandle).parameters
    assert set(AttachOptions.field_names()) <= set(params)


def test_learner_options_are_learner_keywords():
    from synclearn.learn import Learner

    params = inspect.signature(Learner).parameters
    assert set(LearnerOptions.field_names()) <= set(params)
    defaults = dataclasses.asdict(LearnerOptions())
    differ = {name: (defaults[name], params[name].default) for name in LearnerOptions.field_names()
              if params[name].default != defaults[name] and params[name].default is not inspect.Parameter.empty}
    assert not differ, f"Learner and LearnerOptions defaults disagree (options, Learner): {differ}"


def test_pydantic_model_has_the_same_fields_bounds_and_defaults():
    Body = pydantic_model(AttachOptions)
    assert set(Body.model_fields) == set(AttachOptions.field_names())
    assert Body.model_validate({}).model_dump() == dataclasses.asdict(AttachOptions())
    with pytest.raises(pydantic.ValidationError) as err:
        Body.model_validate({"batch_size": 0, "extra": 1, "idle_only": "yes"})
    locs = {e["loc"][0] for e in err.value.errors()}
    assert locs == {"batch_size", "extra", "idle_only"}
    schema = Body.model_json_schema()["properties"]
    assert schema["batch_size"]["minimum"] == 1 and schema["replay_ratio"]["maximum"] == 1
    assert schema["on_error"]["enum"] == ["continue", "stop"]
    assert "replayed" in schema["replay_ratio"]["description"]
    Partial = pydantic_model(AttachOptions, optional=True, exclude=("switch_interval_s",))
    assert "switch_interval_s" not in Partial.model_fields
    assert Partial.model_validate({"batch_size": 3}).model_dump(exclude_none=True) == {"batch_size": 3}


def test_argparse_flags_only_for_what_was_typed():
    parser = argparse.ArgumentParser()
    add_arguments(parser, AttachOptions)
    args = parser.parse_args(["--batch-size", "3", "--no-idle-only", "--on-error", "stop"])
    assert given(args, AttachOptions) == {"batch_size": 3, "idle_only": False, "on_error": "stop"}
    assert given(parser.parse_args([]), AttachOptions) == {}
