"""APGD, the AutoAttack-style ensemble, universal perturbations, EOT and the adversarial patch:
strength, time and model passes, with the peers side by side where they have the attack.

    python benchmarks/whitebox_apgd_universal_eot.py [--sections apgd ensemble universal eot
        patch patch-size] [--models mnist-mlp mnist-cnn] [--n 500]

Sections (each prints its own table; robust accuracy is re-checked on the returned images and
counts an example robust only if it is classified correctly both clean and adversarial):

- apgd: PGD (100 steps, alpha 2.5 eps / steps, random start), APGD-CE, APGD-DLR, APGD-T
  (100 iterations each, the paper's setting) at eps 0.3, 0.15 and 0.1 (Linf), with
  torchattacks' APGD / APGDT and ART's AutoProjectedGradientDescent at equal settings; each
  model's table goes to results/whitebox_apgd_universal_eot-apgd-<model>.json.
- ensemble: autoattack at eps 0.1 against each of its members run alone on the same images;
  each model's table goes to results/whitebox_apgd_universal_eot-ensemble-<model>.json.
- universal: one perturbation fitted on mnist5k train images (the paper's DeepFool algorithm,
  with its L2 inner steps (the default) and with Linf steps, and the "sgd" method), fooling
  rate on the 1,000 held-out test images, against ART's UniversalPerturbation (DeepFool) at
  the same eps and passes (``--no-art`` leaves ART out); the table goes to
  results/whitebox_apgd_universal_eot-universal.json.
- eot: on mnist-cnn, PGD and EOT-PGD at eps 0.3; per adversarial example the fraction of
  random transformations from the EOT distribution under which the adversarial class is kept;
  the table goes to results/whitebox_apgd_universal_eot-eot.json.
- patch: a patch per target trained on train images, target success on held-out images at a
  random placement, against a random patch and ART's AdversarialPatchPyTorch (only when
  torchvision is installed: ART imports it; it is not installed here, since it pins torch).
- patch-size: advlab's patch at 0.2, 0.3 and 0.5 of the image side (100 Adam steps, the
  default) and at 0.5 with 200 steps, target success as in patch; the table goes to
  results/whitebox_apgd_universal_eot-patch-size.json.

"fwd"/"bwd": model forward passes (images) and backward passes, counted on the model.
One thread (the machine is shared); times are comparable within a row only.

Each run writes the date, torch version and load average beside its table (one thread;
seeds 0; one section per process; times are comparable within a section's rows only).

``--sections apgd --n 200`` (Linf; 100 iterations; PGD alpha 2.5 eps / 100, random start)
writes results/whitebox_apgd_universal_eot-apgd-<model>.json (mnist-mlp and mnist-cnn).

APGD-CE leaves no accuracy at eps 0.3 on either model, and where PGD-100 leaves accuracy
APGD-CE leaves no more. advlab counts fewer passes than the peers because it stops fooled
examples early.

``--sections eot`` writes its table to results/whitebox_apgd_universal_eot-eot.json
(mnist-cnn, 100 test images, eps 0.3; survival over 100 draws, seed 1): EOT examples keep
the adversarial class under most draws, plain PGD's under few; the clean images' row shows
how often the distribution itself changes a clean prediction.

``--sections universal`` (200 fitting train images, 3 passes for DeepFool, 10 for
sgd; held-out: the 1,000 test images) in results/whitebox_apgd_universal_eot-universal.json:
the paper's L2 inner steps, projected onto the Linf ball, fool more held-out images than
Linf steps, and the sgd method fools more still in less time. ART's
UniversalPerturbation(attacker="deepfool", max_iter=3, delta=0.2) runs on the same counted
model beside them (ART draws its visiting order from Python's unseeded ``random``): advlab's
DeepFool method fools about as many held-out images where both fool few (within a few per
thousand) and more where either fools many, in a small fraction of ART's time.

``--sections ensemble`` (200 test images, Linf eps 0.1; members alone with the ensemble's
settings and seed) writes results/whitebox_apgd_universal_eot-ensemble-<model>.json (mnist-mlp
and mnist-cnn, with the robust count after each member).

The ensemble is never above its best member alone.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, Counted, art_classifier, have, robust_accuracy, save, table, zoo_setup
from torch import Tensor, nn

import advlab
from advlab.attacks.eot import DEFAULT_DISTRIBUTION, EOTPGD, survival
from advlab.attacks.patch import AdversarialPatch, paste
from advlab.attacks.universal import UniversalPerturbation, fooling_rate


def once(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(counted: Counted, fn: Callable[[], Tensor]) -> tuple[float, Tensor, int, int]:
    counted.reset()
    t, x_adv = once(fn)
    return t, x_adv, counted.rows, counted.backwards


# ----------------------------------------------------------------------------- apgd


def apgd_runs(model: nn.Module, x: Tensor, eps: float
              ) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    runs: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "pgd-100": lambda a, b: advlab.attacks.PGD(eps=eps, steps=100)(model, a, b).x_adv,
        "apgd-ce": lambda a, b: advlab.attacks.get("apgd-ce", eps=eps)(model, a, b).x_adv,
        "apgd-dlr": lambda a, b: advlab.attacks.get("apgd-dlr", eps=eps)(model, a, b).x_adv,
        "apgd-t": lambda a, b: advlab.attacks.get("apgd-t", eps=eps)(model, a, b).x_adv,
    }
    if have("torchattacks"):
        import torchattacks as ta

        runs["ta-apgd-ce"] = lambda a, b: ta.APGD(model, eps=eps, steps=100, loss="ce")(a, b)
        runs["ta-apgd-t"] = lambda a, b: ta.APGDT(model, eps=eps, steps=100, n_classes=10)(a, b)
    if have("art"):
        from art.attacks.evasion import AutoProjectedGradientDescent

        clf = art_classifier(model, tuple(x.shape[1:]))
        art = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps,
                                           max_iter=100, nb_random_init=1, batch_size=len(x),
                                           loss_type="cross_entropy", verbose=False)
        runs["art-apgd-ce"] = lambda a, b: torch.from_numpy(art.generate(a.numpy(), b.numpy()))
    return runs


def section_apgd(models: list[str], n: int, eps_list: list[float]) -> None:
    """Each model's table to results/whitebox_apgd_universal_eot-apgd-<model>.json."""
    rows = []
    columns = ["model", "eps", "attack", "robust_acc", "time_s", "fwd", "bwd"]
    for name in models:
        model, x, y = zoo_setup(name, n)
        counted = Counted(model).eval()
        first = len(rows)
        for eps in eps_list:
            for attack, run in apgd_runs(counted, x, eps).items():
                t, xa, fwd, bwd = measure(counted, lambda r=run: r(x, y))
                rows.append({"model": name, "eps": eps, "attack": attack,
                             "robust_acc": robust_accuracy(model, x, y, xa.to(x.dtype)),
                             "time_s": t, "fwd": fwd, "bwd": bwd})
                print(table(rows[-1:], list(rows[-1])), flush=True)
        print(save(RESULTS / f"whitebox_apgd_universal_eot-apgd-{name}.json", rows[first:],
                   columns, section="apgd", model=name, n=n, norm="linf", iterations=100,
                   pgd="alpha 2.5 eps / 100, random start", images="first n mnist5k test images"))
    print(f"\nAPGD (n = {n}, Linf, 100 iterations)\n" + table(rows, columns))


# ----------------------------------------------------------------------------- ensemble


def section_ensemble(models: list[str], n: int, eps: float) -> None:
    """Each model's table to results/whitebox_apgd_universal_eot-ensemble-<model>.json."""
    rows = []
    for name in models:
        model, x, y = zoo_setup(name, n)
        aa = advlab.attacks.get("autoattack", eps=eps)
        members, skipped = aa.resolve()
        first = len(rows)
        t, res = once(lambda: aa(model, x, y))
        rows.append({"model": name, "attack": "autoattack (" + "+".join(members) + ")",
                     "robust_acc": robust_accuracy(model, x, y, res.x_adv), "time_s": t})
        print(table(rows[-1:], list(rows[-1])), "skipped:", skipped, "after each:",
              res.info["robust_after"], flush=True)
        for m in members:
            atk = advlab.attacks.get(m, eps=eps, **aa.member_kwargs.get(m, {}))
            t, r = once(lambda a=atk: a(model, x, y))
            rows.append({"model": name, "attack": m + " alone",
                         "robust_acc": robust_accuracy(model, x, y, r.x_adv), "time_s": t})
            print(table(rows[-1:], list(rows[-1])), flush=True)
        print(save(RESULTS / f"whitebox_apgd_universal_eot-ensemble-{name}.json", rows[first:],
                   ["model", "attack", "robust_acc", "time_s"], section="ensemble", model=name,
                   n=n, norm="linf", eps=eps, robust_after=res.info["robust_after"],
                   skipped=skipped, images="first n mnist5k test images"))
    print(f"\nEnsemble (n = {n}, Linf eps = {eps})\n"
          + table(rows, ["model", "attack", "robust_acc", "time_s"]))


# ----------------------------------------------------------------------------- universal


def section_universal(models: list[str], n_fit: int, eps_list: list[float], passes: int,
                      art: bool = True) -> None:
    rows = []
    x_out, _ = advlab.data.load("mnist5k", split="test")
    for name in models:
        model, x_fit, _ = zoo_setup(name, n_fit, split="train")
        counted = Counted(model).eval()
        for eps in eps_list:
            for impl, atk in [("advlab-deepfool", UniversalPerturbation(eps=eps,
                                                                       max_passes=passes)),
                              ("advlab-deepfool, linf steps", UniversalPerturbation(
                                  eps=eps, max_passes=passes, step_norm="linf")),
                              ("advlab-sgd", UniversalPerturbation(eps=eps, method="sgd"))]:
                counted.reset()
                t, res = once(lambda a=atk: a.fit(counted, x_fit))
                rows.append({"model": name, "eps": eps, "impl": impl,
                             "fit_rate": res.fooling_rate,
                             "heldout_rate": fooling_rate(model, x_out, res.delta),
                             "time_s": t, "passes": res.passes, "fwd": counted.rows,
                             "bwd": counted.backwards})
                print(table(rows[-1:], list(rows[-1])), flush=True)
            if art and have("art"):
                from art.attacks.evasion import UniversalPerturbation as ArtUAP

                clf = art_classifier(counted, tuple(x_fit.shape[1:]))
                art = ArtUAP(clf, attacker="deepfool", attacker_params={"verbose": False},
                             eps=eps, norm=np.inf, max_iter=passes, delta=0.2,
                             batch_size=len(x_fit), verbose=False)
                counted.reset()
                t, _ = once(lambda: art.generate(x_fit.numpy()))
                noise = torch.from_numpy(art.noise).to(x_fit.dtype)
                rows.append({"model": name, "eps": eps, "impl": "art-deepfool",
                             "fit_rate": art.fooling_rate,
                             "heldout_rate": fooling_rate(model, x_out, noise), "time_s": t,
                             "fwd": counted.rows, "bwd": counted.backwards})
                print(table(rows[-1:], list(rows[-1])), flush=True)
    print(f"\nUniversal (Linf, {n_fit} fitting images, DeepFool: <= {passes} passes, sgd: <= 10; "
          "stop at fooling rate 0.8; held-out: the 1,000 test images)\n"
          + table(rows, ["model", "eps", "impl", "fit_rate", "heldout_rate", "time_s", "passes",
                         "fwd", "bwd"]))
    path = Path(__file__).parent / "results" / "whitebox_apgd_universal_eot-universal.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({
        "section": "universal", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(), "norm": "linf", "n_fit": n_fit, "passes": passes,
        "heldout": "the 1,000 mnist5k test images", "rows": rows}, indent=1) + "\n")
    print(path)


# ----------------------------------------------------------------------------- eot


def section_eot(n: int, eps: float, samples: int) -> None:
    model, x, y = zoo_setup("mnist-cnn", n)
    clean = survival(model, x, samples=samples, seed=1)
    rows = [{"attack": "clean images", "success": 0.0, "survival_mean": clean.mean().item(),
             "frac_ge_0.9": (clean >= 0.9).float().mean().item()}]
    for name, atk in [("pgd-100", advlab.attacks.PGD(eps=eps, steps=100)),
                      ("eot-pgd (100 steps, 10 samples)", EOTPGD(eps=eps))]:
        t, res = once(lambda a=atk: a(model, x, y))
        s = survival(model, res.x_adv[res.success], samples=samples, seed=1)
        rows.append({"attack": name, "success": res.success.float().mean().item(),
                     "survival_mean": s.mean().item(),
                     "frac_ge_0.9": (s >= 0.9).float().mean().item(), "time_s": t})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    columns = ["attack", "success", "survival_mean", "frac_ge_0.9", "time_s"]
    print(f"\nEOT on mnist-cnn (n = {n}, Linf eps = {eps}; survival: fraction of {samples} "
          f"draws of {DEFAULT_DISTRIBUTION} keeping the adversarial class, over successful "
          "examples)\n" + table(rows, columns))
    print(save(Path(__file__).parent / "results" / "whitebox_apgd_universal_eot-eot.json", rows,
               columns, section="eot", model="mnist-cnn", n=n, eps=eps, samples=samples,
               distribution=str(DEFAULT_DISTRIBUTION), images="first n mnist5k test images"))


# ----------------------------------------------------------------------------- patch


def patch_row(atk: AdversarialPatch, model: nn.Module, x_fit: Tensor, t: int) -> dict:
    """Fit ``atk``'s patch for target t; its target success on the held-out test images of
    the other classes at random placements, against a random patch of the same shape."""
    x_all, y_all = advlab.data.load("mnist5k", split="test")
    x_out = x_all[y_all != t]
    theta = atk.placements(x_out, torch.Generator().manual_seed(1))
    tt, fitted = once(lambda: atk.fit(model, x_fit, target=t))
    rnd = torch.rand(fitted.patch.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hit = (model(paste(x_out, fitted.patch, fitted.mask, theta)[0]).argmax(1) == t)
        base = (model(paste(x_out, rnd, fitted.mask, theta)[0]).argmax(1) == t)
    return {"target": t, "advlab_success": hit.float().mean().item(),
            "random_patch": base.float().mean().item(), "advlab_s": tt}


def section_patch(models: list[str], n_fit: int, targets: list[int]) -> None:
    rows = []
    x_all, y_all = advlab.data.load("mnist5k", split="test")
    for name in models:
        model, x_fit, _ = zoo_setup(name, n_fit, split="train")
        atk = AdversarialPatch()
        for t in targets:
            x_out = x_all[y_all != t]
            row = {"model": name, **patch_row(atk, model, x_fit, t)}
            if have("art") and have("torchvision"):  # ART's patch needs torchvision
                from art.attacks.evasion import AdversarialPatchPyTorch

                clf = art_classifier(model, tuple(x_fit.shape[1:]))
                art = AdversarialPatchPyTorch(clf, rotation_max=22.5, scale_min=0.4,
                                              scale_max=0.6, max_iter=200, batch_size=64,
                                              learning_rate=0.05, patch_shape=(1, 28, 28),
                                              patch_type="circle", verbose=False)
                onehot = np.eye(10, dtype=np.float32)[np.full(len(x_fit), t)]
                ta, _ = once(lambda: art.generate(x_fit.numpy(), onehot))
                xa = art.apply_patch(x_out.numpy(), scale=0.5)
                with torch.no_grad():
                    ok = model(torch.from_numpy(xa).to(x_out.dtype)).argmax(1) == t
                row.update({"art_success": ok.float().mean().item(), "art_s": ta})
            rows.append(row)
            print(table(rows[-1:], list(rows[-1])), flush=True)
    print(f"\nPatch (size 0.5 of the side, circle, EOT over scale 0.8-1.2, rotation 22.5 deg, "
          f"location; {n_fit} fitting images; held-out: test images of other classes)\n"
          + table(rows, ["model", "target", "advlab_success", "random_patch", "advlab_s",
                         "art_success", "art_s"]))


def section_patch_size(models: list[str], n_fit: int, targets: list[int]) -> None:
    """advlab's patch at sizes 0.2, 0.3 and 0.5 of the side with 100 Adam steps (the
    default), and at 0.5 with 200; written to
    results/whitebox_apgd_universal_eot-patch-size.json."""
    rows = []
    for name in models:
        model, x_fit, _ = zoo_setup(name, n_fit, split="train")
        for size, steps in ((0.2, 100), (0.3, 100), (0.5, 100), (0.5, 200)):
            for t in targets:
                rows.append({"model": name, "size": size, "steps": steps,
                             **patch_row(AdversarialPatch(size=size, steps=steps), model,
                                         x_fit, t)})
                print(table(rows[-1:], list(rows[-1])), flush=True)
    columns = ["model", "size", "steps", "target", "advlab_success", "random_patch", "advlab_s"]
    print(table(rows, columns))
    print(save(Path(__file__).parent / "results" / "whitebox_apgd_universal_eot-patch-size.json",
               rows, columns, section="patch-size", n_fit=n_fit,
               heldout="mnist5k test images of the other classes, random placements"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sections", nargs="+",
                    default=["apgd", "ensemble", "universal", "eot", "patch", "patch-size"])
    ap.add_argument("--models", nargs="+", default=["mnist-mlp", "mnist-cnn"])
    ap.add_argument("--n", type=int, default=500, help="images for apgd")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.3, 0.15, 0.1])
    ap.add_argument("--ensemble-n", type=int, default=200)
    ap.add_argument("--uap-n", type=int, default=200, help="fitting images (universal)")
    ap.add_argument("--uap-eps", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--uap-passes", type=int, default=3)
    ap.add_argument("--eot-n", type=int, default=100)
    ap.add_argument("--patch-n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--art", action=argparse.BooleanOptionalAction, default=True,
                    help="run ART's universal perturbation (minutes) beside advlab's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if "apgd" in args.sections:
        section_apgd(args.models, args.n, args.eps)
    if "ensemble" in args.sections:
        section_ensemble(args.models, args.ensemble_n, 0.1)
    if "universal" in args.sections:
        section_universal(args.models, args.uap_n, args.uap_eps, args.uap_passes, args.art)
    if "eot" in args.sections:
        section_eot(args.eot_n, 0.3, 100)
    if "patch" in args.sections:
        section_patch(args.models, args.patch_n, [3, 8])
    if "patch-size" in args.sections:
        section_patch_size(args.models, args.patch_n, [3, 8])


if __name__ == "__main__":
    main()
