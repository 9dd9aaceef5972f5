"""advlab.evaluation.sanity: run_all, every check in order, silent on the zoo and firing on a naive
evaluation of a transformation defense; the binarization check with its readout attack."""
from __future__ import annotations

import masked_suite
from advlab import defenses
from advlab.evaluation import sanity


def test_silent_on_the_zoo(mlp, cnn, mnist100):
    x, y = mnist100
    for model in (mlp, cnn):
        findings = sanity.run_all(model, x, y, eps=0.3, blackbox_queries=300)
        assert [f.message for f in findings if f.fired] == []
        assert all(f.attack is None for f in findings)
        assert [f.name for f in findings] == ["softmax", "randomness", "gradients",
                                              "one-step-vs-iterative", "blackbox-vs-whitebox",
                                              "unbounded", "binarization"]


def test_naive_evaluation_of_a_transformation_defense_is_flagged(mlp, mnist100):
    x, y = mnist100
    d = defenses.Transformed(mlp, [defenses.Translate(max_shift=1), defenses.BitDepth(1)])
    fired = {f.name for f in sanity.run_all(d, x, y, blackbox_queries=200) if f.fired}
    assert {"randomness", "gradients", "unbounded"} <= fired


def test_binarization_check_fires_on_shattered_members_only(suite, mnist_test) -> None:  # noqa: ANN001
    x, y = mnist_test
    for name, fires in (("bit-depth-2", True), ("quantized-activations", True),
                        ("saturated-softmax", False)):
        xs, ys = masked_suite.correct(suite[name], x, y, 8)
        f = sanity.check_binarization(suite[name].model, xs, ys, sanity.pgd_on_readout(),
                                      eps=0.3)
        assert f.evidence["tested"] >= 6
        assert f.fired == fires, (name, f.message)
        assert (f.evidence["pass_rate"] == 0.0) == fires         # masked: never found
    m = suite["gaussian-noise"]
    xs, ys = masked_suite.correct(m, x, y, 8)
    f = next(f for f in sanity.run_all(m.model, xs, ys, blackbox_queries=20)
             if f.name == "binarization")
    assert f.skipped and not f.fired and "randomised" in f.message
