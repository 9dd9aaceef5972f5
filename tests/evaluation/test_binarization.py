"""advlab.evaluation.binarization: the binarization test passes for PGD / APGD and fails for a
crippled FGSM or an attack that does nothing."""
from __future__ import annotations

import advlab
from advlab.evaluation import sanity
from advlab.evaluation.binarization import binarization_test


def test_binarization_passes_for_pgd_and_apgd_fails_for_a_crippled_fgsm(mnist_test) -> None:  # noqa: ANN001
    model = advlab.zoo.load("mnist-mlp")
    x, y = mnist_test[0][:6], mnist_test[1][:6]
    pgd = binarization_test(model, x, y, lambda m, xi, z, e: advlab.attacks.PGD(
        eps=e, steps=20)(m, xi, z).x_adv, 0.3)
    apgd = binarization_test(model, x, y, lambda m, xi, z, e: advlab.attacks.get(
        "apgd-ce", eps=e, steps=20)(m, xi, z).x_adv, 0.3)
    weak = binarization_test(model, x, y, lambda m, xi, z, e: advlab.attacks.FGSM(
        eps=e / 10)(m, xi, z).x_adv, 0.3)
    assert pgd.tested >= 5 and pgd.pass_rate == 1.0 and apgd.pass_rate == 1.0
    assert weak.tested == pgd.tested and weak.pass_rate <= 0.5
    nothing = binarization_test(model, x, y, lambda m, xi, z, e: xi.clone(), 0.3)
    assert nothing.passed == 0                               # a do-nothing attack fails it
    f = sanity.check_binarization(model, x, y, lambda m, xi, z, e: advlab.attacks.FGSM(
        eps=e / 10)(m, xi, z).x_adv, eps=0.3)
    assert f.fired and f.evidence["pass_rate"] == weak.pass_rate
