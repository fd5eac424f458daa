"""The task protocol: every task implements `Task` and the interface of every capability it names; the API and
the evaluators refuse a task that lacks a capability with the same messages as before."""

import pytest
from support import load_config

from lzn_jax import configlib, tasks
from lzn_jax.tasks import protocol

P = protocol
EXPECTED = {
    "digits_joint": {P.GENERATES, P.INVERTS, P.EMBEDS, P.ZONES, P.CLASSIFIES},
    "digits_gen": {P.GENERATES, P.INVERTS, P.EMBEDS, P.ZONES},
    "digits_repr": {P.EMBEDS, P.ZONES},
    "digits_simclr": {P.EMBEDS},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_task_implements_the_interfaces_of_its_capabilities(name):
    config = load_config(name, "runlocal")
    configlib.check(config)
    task = tasks.build(config)  # build runs protocol.check
    assert isinstance(task, protocol.Task)
    assert set(task.capabilities) == EXPECTED[name]
    for capability in task.capabilities:
        assert isinstance(task, protocol.INTERFACES[capability]), capability


def test_a_plain_rectified_flow_generates_but_has_no_latents():
    config = load_config("digits_gen", "runlocal")
    config.encoder.name = ""
    task = tasks.build(config)
    assert set(task.capabilities) == {P.GENERATES, P.INVERTS}
    assert not tasks.can(task, P.ZONES)


def test_can_refuses_unknown_capabilities_and_require_raises_the_message():
    task = tasks.build(load_config("digits_simclr", "runlocal"))
    with pytest.raises(ValueError, match="Unknown task capabilities"):
        tasks.can(task, "flies")
    with pytest.raises(ValueError, match="no latents here"):
        tasks.require(task, P.ZONES, message="no latents here")


def test_check_refuses_a_task_that_names_a_capability_it_does_not_implement():
    class Half:
        modules = ("encoder",)
        capabilities = frozenset({P.CLASSIFIES})

        def init(self, rng, batch): ...
        def noise(self, rng, batch): ...
        def loss(self, params, batch, noise, rng, *, axis_name=None): ...

    with pytest.raises(TypeError, match="does not implement Classifies"):
        protocol.check(Half())
    with pytest.raises(TypeError, match="task protocol"):
        protocol.check(object())
