"""The model registry (models/registry.py): names, hyper-parameter validation, specs."""
from __future__ import annotations

import math

import pytest

from cellannot_core._constants import DEFAULT_MODEL
from cellannot_core.errors import ConfigError
from cellannot_core.models import MODELS, HParam, Model, Supports, create_model, get_spec, model_names, resolve_hparams
from cellannot_core.models.registry import register

EXPECTED = ["scanvi_svm", "clams", "jem", "resnet"]


def test_registered_models_and_order():
    assert model_names()[:4] == EXPECTED  # app shows them in this order
    assert set(EXPECTED) <= set(MODELS)
    assert model_names()[0] == DEFAULT_MODEL


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as exc:
        get_spec("clamz")
    msg = str(exc.value)
    assert "clamz" in msg
    for name in EXPECTED:
        assert name in msg
    assert msg.endswith("Did you mean 'clams'?")
    with pytest.raises(ConfigError, match="Did you mean 'scanvi_svm'"):
        get_spec("scANVI-SVM")
    with pytest.raises(ConfigError) as exc:
        get_spec("zzzz")
    assert "Did you mean" not in str(exc.value)
    with pytest.raises(ConfigError, match="resnet"):
        create_model("nope", 10, ["a", "b"], device="cpu")
    with pytest.raises(ConfigError):
        resolve_hparams("nope", {})


def test_unknown_hparam_lists_valid_ones():
    with pytest.raises(ConfigError) as exc:
        resolve_hparams("clams", {"learning_rate": 0.1})
    msg = str(exc.value)
    assert "learning_rate" in msg and "lr" in msg and "px_weight" in msg
    # resnet has no SGLD hyper-parameters
    with pytest.raises(ConfigError, match="sgld_steps"):
        resolve_hparams("resnet", {"sgld_steps": 2})


@pytest.mark.parametrize("name, value, match", [
    ("lr", "abc", "must be a number"),
    ("lr", 10.0, "<="),
    ("lr", 0.0, ">="),
    ("stochastic_p", 2, "<="),
    ("stochastic_p", -0.1, ">="),
    ("max_epochs", 2.5, "whole number"),
    ("max_epochs", "2.5", "whole number"),
    ("max_epochs", "ten", "whole number"),
    ("max_epochs", 0, ">="),
    ("sgld_steps", 0, ">="),
    ("elu_clip", "maybe", "true or false"),
    ("activation", "tanh", "one of"),
    ("ood_score", "bogus", "one of"),
    ("sgld_init", "gaussian", "one of"),
    ("stochastic_mode", "sometimes", "one of"),
    ("px_weight", "inf", "<="),
])
def test_bad_values_rejected(name, value, match):
    with pytest.raises(ConfigError, match=match) as exc:
        resolve_hparams("clams", {name: value})
    assert name in str(exc.value)


@pytest.mark.parametrize("name", ["lr", "stochastic_p", "px_weight"])
def test_nan_float_rejected(name):
    with pytest.raises(ConfigError):
        resolve_hparams("clams", {name: "nan"})


@pytest.mark.parametrize("text, expect", [("true", True), ("false", False), ("True", True), ("FALSE", False),
                                          ("1", True), ("0", False), ("yes", True), ("no", False),
                                          (True, True), (False, False), (0, False)])
def test_bool_strings(text, expect):
    assert resolve_hparams("clams", {"elu_clip": text})["elu_clip"] is expect


def test_string_values_are_converted():
    h = resolve_hparams("clams", {"lr": "0.01", "max_epochs": "3", "batch_size": 16.0, "hidden": 32,
                                  "stochastic_p": "0.5"})
    assert h["lr"] == 0.01 and isinstance(h["lr"], float)
    assert h["max_epochs"] == 3 and isinstance(h["max_epochs"], int)
    assert h["batch_size"] == 16 and isinstance(h["batch_size"], int)
    assert h["hidden"] == "32"
    assert h["stochastic_p"] == 0.5


def test_resolve_returns_defaults_plus_overrides_without_mutating_spec():
    spec = get_spec("clams")
    before = dict(spec.defaults)
    h = resolve_hparams("clams", {"max_epochs": 2})
    assert h == {**before, "max_epochs": 2}
    h["lr"] = 123
    assert spec.defaults == before
    assert resolve_hparams("clams") == before


@pytest.mark.parametrize("name", EXPECTED)
def test_every_model_has_description_and_valid_defaults(name):
    spec = get_spec(name)
    assert spec.name == name and spec.cls.name == name and issubclass(spec.cls, Model)
    assert isinstance(spec.description, str) and len(spec.description) > 20 and "\n" not in spec.description
    assert isinstance(spec.supports, Supports) and spec.supports.latent
    assert spec.hparams, "a model without hyper-parameters cannot be configured by the app"
    for k, hp in spec.hparams.items():
        assert isinstance(hp, HParam) and hp.help.strip(), k
        assert hp.validate(k, hp.default) == hp.default, k
        assert hp.type in (bool, int, float, str), k
        if hp.choices is not None:
            assert hp.default in hp.choices, k
        if hp.low is not None:
            assert hp.low <= hp.default and (hp.high is None or hp.low <= hp.high), k
        if isinstance(hp.default, float):
            assert math.isfinite(hp.default)
        # the string form (as typed on the command line) validates to the same value
        assert hp.validate(k, str(hp.default)) == hp.default, k
    assert resolve_hparams(name, spec.defaults) == spec.defaults
    wanted = ("max_epochs", "ood_score") + (("batch_size", "lr", "hidden") if name != "scanvi_svm" else ())
    for k in wanted:
        assert k in spec.hparams


def test_capabilities():
    assert get_spec("clams").supports.samples and get_spec("jem").supports.samples
    assert not get_spec("resnet").supports.samples
    assert "blocks" in get_spec("resnet").hparams and "px_weight" not in get_spec("resnet").hparams
    assert {"elu_clip", "stochastic_p"} <= set(get_spec("clams").hparams)
    assert "elu_clip" not in get_spec("jem").hparams


def test_register_twice_is_an_error_and_does_not_replace():
    spec = MODELS["clams"]
    with pytest.raises(ValueError, match="twice"):
        register("clams", description="x", supports=Supports(), hparams={})(type("Dup", (), {}))
    assert MODELS["clams"] is spec


def test_register_new_model_appears_in_names():
    try:
        @register("zz_test_dummy", description="a test model", supports=Supports(), hparams={
            "k": HParam(3, "an int", low=1, high=5)}, order=999)
        class Dummy(Model):
            pass

        assert model_names()[-1] == "zz_test_dummy" and Dummy.name == "zz_test_dummy"
        assert resolve_hparams("zz_test_dummy", {"k": "4"}) == {"k": 4}
        m = create_model("zz_test_dummy", 5, ["a", "b"], seed=3, hparams={"k": 2})
        assert isinstance(m, Dummy) and m.hparams == {"k": 2} and m.n_classes == 2 and m.seed == 3
        with pytest.raises(NotImplementedError):
            m.sample(2)
    finally:
        MODELS.pop("zz_test_dummy", None)
    assert "zz_test_dummy" not in model_names()


@pytest.mark.parametrize("hp, match", [
    ({"hidden": "32,abc"}, "hidden"),
    ({"hidden": "0,4"}, "hidden"),
    ({"hidden": ""}, "hidden"),
])
def test_bad_hidden_widths_are_config_errors(hp, match):
    with pytest.raises(ConfigError, match=match):
        create_model("clams", 10, ["a", "b"], device="cpu", hparams=hp)


def test_resnet_blocks_must_match_widths():
    with pytest.raises(ConfigError, match="blocks"):
        create_model("resnet", 10, ["a", "b"], device="cpu", hparams={"hidden": "8,4", "blocks": "1"})


@pytest.mark.parametrize("model, hparams", [("clams", {"hidden": "6000,6000,64"}), ("vera", {"gen_hidden": "6000,6000"}),
                                            ("scanvi", {"n_hidden": 4096, "n_layers": 5})])
def test_a_net_past_the_memory_limit_is_refused_before_it_is_built(monkeypatch, model, hparams):
    """Widths are free text in the app's form (and a saved model's config): the form's check built
    the net in the server's own process, 3.9 GB for hidden 30000,30000. Without the size check these
    nets (36-200 million parameters) are built and no error is raised."""
    import resource

    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.25")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match="CELLANNOT_MEMORY_LIMIT_GB"):
        create_model(model, 2000, ["a", "b"], device="cpu", hparams=hparams)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing was allocated
    create_model(model, 50, ["a", "b"], device="cpu", hparams=None)  # the defaults on few genes fit


def test_the_latent_width_is_bounded():
    """hidden=400000 fitted under the memory limit (one layer) and then asked the novelty score
    for a 400,000-square covariance (1.2 TiB), an 'internal error'."""
    with pytest.raises(ConfigError, match="latent space"):
        create_model("clams", 50, ["a", "b"], device="cpu", hparams={"hidden": "64,400000"})
    create_model("clams", 50, ["a", "b"], device="cpu", hparams={"hidden": "64,1024"})
