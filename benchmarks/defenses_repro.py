"""Long reproductions of the defense stories (run by hand; each prints a table).

    python benchmarks/defenses_repro.py advtrain [--method trades] [--epochs 40] ...
    python benchmarks/defenses_repro.py distillation
    python benchmarks/defenses_repro.py transforms
    python benchmarks/defenses_repro.py pixeldefend
    python benchmarks/defenses_repro.py magnet
    python benchmarks/defenses_repro.py sanity [--model mnist-cnn-trades]
    python benchmarks/defenses_repro.py --n 40 binarization [--model mnist-cnn-trades]
    python benchmarks/defenses_repro.py timing

Everything runs on CPU with one thread (torch.set_num_threads(1)) on mnist5k: train split
for training, the first ``--n`` test images for evaluation. Checkpoints and trained models go
under ``--out`` (default benchmarks/out/), so an interrupted run resumes.

The sections distillation, magnet, pixeldefend, sanity, binarization and timing write their
tables to benchmarks/results/defenses_repro-<section>[-<model>].json (with the date, torch
version and load average); advtrain and transforms print theirs (advtrain keeps its
training history beside its checkpoints under ``--out``).

``--n 100 distillation`` (mnist-cnn; attacks on the test images each model classifies
correctly; FGSM eps 0.3 on the softmax cross-entropy of the deployed T = 1 student and on the
C&W margin of its logits, JSMA on its softmax, C&W L2 on the logits; the median top-2 logit
gap; sanity.check_gradients and its vanishing fraction): T = 100 inflates the logit gap, so
the attacks through the softmax stop working while the margin-based ones (FGSM on the margin,
C&W) do not, and the gradient check fires.

``--n 100 magnet --lam 1`` (mnist-cnn, Linf eps 0.3; MagNet autoencoder 16 maps, 10 epochs;
detector threshold at 5% false positives on 500 other clean test images; success = the
reformed prediction is wrong and the input is not flagged): oblivious PGD and PGD through the
reformer are all flagged; ``Reformer.adaptive()`` (DetectorAwarePGD-100 through the reformer)
gets past the detector on almost every image.

``--n 100 pixeldefend`` (mnist-cnn, Linf eps 0.3; PixelCNN 256 levels, 16 maps, 4 blocks, 3
epochs; BPDA = ``PixelDefend.adaptive()``: PGD-100 on the C&W margin, identity backward
through the purifier; "moved" = fraction of pixels where purify(x_adv) != purify(x); Song et
al. evaluate Fashion-MNIST and CIFAR-10, not MNIST: 0.3 = the attack's eps, 32/255 = a radius
below it, of the size they use on Fashion-MNIST) writes
results/defenses_repro-pixeldefend-eps<eps>.json (with the PixelCNN's bits/dim and the
undefended model's figures): at eps_defend 0.3 oblivious PGD-40 barely moves the defended
accuracy and BPDA fools a minority, moving few purified pixels; at eps_defend 32/255 BPDA
fools every image.

With eps <= eps_defend the window [x'_i - eps_defend, x'_i + eps_defend] of every attacked
pixel holds its clean value, which the PixelCNN prefers wherever it is confident (MNIST's
near-binary background and strokes): most purified pixels are exactly those of the clean
image's purification whatever the attacker does; only uncertain edge pixels and their effect
on later pixels' context remain to move. That is a property of the purification, not a
weakness of BPDA, which fools every image as soon as eps > eps_defend (``--n 50 pixeldefend
--eps-defend 0.3 --eps 0.4`` and ``--eps 0.5``: results/defenses_repro-pixeldefend-eps0.4.json
and -eps0.5.json). An attack that follows the purifier exactly instead of through a surrogate
gradient (``pixeldefend_adaptive.py``: the attacker purifies, choosing at each pixel the input
whose window reaches the purified value it wants, with PGD on the classifier over the
reachable values) fools only a few more of the same 100 images at eps_defend 0.3, few pixels
can be moved at all, and BPDA against 1-bit binarisation does about as well
(results/pixeldefend_adaptive-eps0.3-defend0.3.json): BPDA's figure is near what the stronger
attack reaches, not the figure of a weak attack.

``--n 100 sanity --model mnist-cnn-trades``: every check's evidence goes to
results/defenses_repro-sanity-<model>.json. On an early checkpoint of the same recipe (not
kept), PGD-20 fell well behind Square-1000 and made the black-box check fire although
APGD-CE + APGD-DLR reached beyond Square: the check now confirms with them before firing.

``timing`` (mnist5k-train, 4,000 images, one epoch each, one thread; "x plain" = seconds over
the mean of a plain mnist-cnn epoch timed just before and after, the ratio that carries over
between machines) writes results/defenses_repro-timing.json; the zoo's mnist-cnn-trades (30
TRADES epochs) costs 30 times the trades row's ratio in plain epochs.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import advlab
from advlab import attacks, defenses, zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table  # noqa: E402

log = logging.getLogger("defenses_repro")


def _robust(model: nn.Module, atk: attacks.Attack, x: Tensor, y: Tensor,
            batch: int = 250) -> Tensor:
    """Per-example success (bool) of an attack, in batches."""
    out = []
    for i in range(0, len(x), batch):
        out.append(atk(model, x[i:i + batch], y[i:i + batch]).success)
    return torch.cat(out)


def strong_attacks(eps: float) -> dict[str, attacks.Attack]:
    """PGD-40 and the strongest registered attacks (APGD-CE / APGD-DLR, 100 iterations)."""
    names = {"pgd-40": ("pgd", {"steps": 40}), "apgd-ce-100": ("apgd-ce", {"steps": 100}),
             "apgd-dlr-100": ("apgd-dlr", {"steps": 100})}
    out = {}
    for label, (name, kw) in names.items():
        if name in attacks.available():
            out[label] = attacks.get(name, eps=eps, **kw)
    return out


def evaluate_robust(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, float]:
    """Clean accuracy, robust accuracy per attack, and the per-example worst case."""
    res = {"clean": zoo.accuracy(model, x, y)}
    fooled = torch.zeros(len(x), dtype=torch.bool)
    for label, atk in strong_attacks(eps).items():
        t0 = time.perf_counter()
        s = _robust(model, atk, x, y)
        fooled |= s
        res[label] = 1 - s.float().mean().item()
        log.info("%s: robust %.4f (%.0f s)", label, res[label], time.perf_counter() - t0)
    res["worst-case"] = 1 - fooled.float().mean().item()
    return res


# ----------------------------------------------------------------------------- advtrain


def cmd_advtrain(a: argparse.Namespace) -> None:
    x_tr, y_tr = advlab.data.load("mnist5k", "train")
    x_te, y_te = advlab.data.load("mnist5k", "test")
    x_te, y_te = x_te[:a.n], y_te[:a.n]
    kw: dict = {"epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size,
                "eps_ramp": a.ramp, "lr_schedule": a.schedule, "seed": a.seed}
    if a.augment:
        kw["augment"] = defenses.Translate(max_shift=a.augment)
    if a.val:
        # hold out every 8th training image for early stopping on robust accuracy
        held = torch.arange(len(x_tr)) % 8 == 7
        kw.update(x_val=x_tr[held], y_val=y_tr[held], patience=a.patience)
        x_tr, y_tr = x_tr[~held], y_tr[~held]
    name = f"{a.method}-e{a.epochs}-s{a.steps}-b{a.beta}-aug{a.augment}-val{int(a.val)}" \
           f"-{a.schedule}-r{a.ramp}"
    out = Path(a.out) / "advtrain" / name
    kw["checkpoint"] = out / "ckpt"
    base = zoo.build("mnist-cnn", seed=a.seed)
    t0 = time.perf_counter()
    if a.method == "trades":
        model = defenses.trades_training(base, x_tr, y_tr, eps=a.eps, beta=a.beta,
                                         steps=a.steps, **kw)
    elif a.method == "madry":
        model = defenses.madry_training(base, x_tr, y_tr, eps=a.eps, steps=a.steps, **kw)
    else:
        model = defenses.fast_training(base, x_tr, y_tr, eps=a.eps, **kw)
    train_s = time.perf_counter() - t0
    recipe = {k: v for k, v in vars(a).items() if k != "fn"}
    zoo.save(model, out / "model.safetensors", {"recipe": recipe})
    res = evaluate_robust(model, x_te, y_te, a.eps)
    res["train_seconds (this call)"] = round(train_s, 1)
    res["history"] = getattr(model, "train_history", [])
    (out / "result.json").write_text(json.dumps(res, indent=1))
    print(name)
    print(table([{k: v for k, v in res.items() if k != "history"}],
                [k for k in res if k != "history"]))


def _rate(atk: attacks.Attack, model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, Tensor]:
    res = atk(model, x, y)
    return res.success.float().mean().item(), res.norms["l2"][res.success]


def _fired(model: nn.Module, x: Tensor, y: Tensor) -> str:
    from advlab.evaluation import sanity

    f = sanity.check_gradients(model, x, y)
    return f"{'FIRES' if f.fired else 'silent'} (vanishing {f.evidence['vanishing']:.2f})"


def _student(base: nn.Module, x: Tensor, y: Tensor, t: float, epochs: int,
             out: Path) -> tuple[nn.Module, float]:
    """The distilled student at temperature t, cached under ``out`` (seconds: 0 when cached)."""
    path = out / f"distilled-T{t:g}-e{epochs}.safetensors"
    student = zoo.build("mnist-cnn", seed=0)
    if path.exists():
        return zoo.load_weights(student, path).eval(), 0.0
    t0 = time.perf_counter()
    _, student = defenses.distill(base, x, y, temperature=t, epochs=epochs)
    secs = time.perf_counter() - t0
    zoo.save(student, path, {"temperature": t, "epochs": epochs, "train_seconds": secs})
    return student, secs


def cmd_distillation(a: argparse.Namespace) -> None:
    """Papernot et al.'s story and Carlini & Wagner's answer, on mnist-cnn.

    Attacks on the *softmax* of the deployed (T = 1) student, as in Papernot et al.:

    - FGSM with ``loss="ce"``: J = -log softmax(Z(x))_y, so the input gradient is
      (softmax(Z) - e_y)^T dZ/dx, which is exactly 0 in float32 once the logit gaps exceed
      ~100 (the student's logits are ~T times a normal network's);
    - JSMA with ``output="probs"``: the Jacobian of the softmax probabilities (the paper's F),
      theta = +1, gamma = 14.5%, random targets.

    Attacks on the *logits* (Carlini & Wagner 2017, arXiv:1608.04644, Section VIII / Table VI):

    - FGSM with ``loss="margin"``: the C&W margin max_{j != y} Z_j - Z_y (scale changes nothing
      in the sign of its gradient);
    - C&W L2 (margin loss on Z, 9 binary-search steps over c, ``--cw-steps`` Adam steps).

    Every attack runs on the test images each model classifies correctly (success = the label
    changes, or the target is reached for JSMA); "cw L2 ratio" is the median L2 of C&W divided
    by the undistilled model's.
    """
    x_tr, y_tr = advlab.data.load("mnist5k", "train")
    x_te, y_te = advlab.data.load("mnist5k", "test")
    x, y = x_te[:a.n], y_te[:a.n]
    base = zoo.build("mnist-cnn", seed=0)
    out = Path(a.out) / "distillation"
    out.mkdir(parents=True, exist_ok=True)
    rows, l2_plain = [], None
    models = [("undistilled (zoo mnist-cnn)", None)] + [(f"distilled T={t:g}", t)
                                                         for t in a.temperatures]
    for label, t in models:
        if t is None:
            student, secs = zoo.load("mnist-cnn"), float("nan")
        else:
            student, secs = _student(base, x_tr, y_tr, t, a.epochs, out)
        with torch.no_grad():
            ok = student(x).argmax(1) == y
            gap = student(x).topk(2, 1).values.diff(dim=1).abs().median().item()
        xs, ys = x[ok], y[ok]
        row = {"model": label, "clean": ok.float().mean().item(), "train_s": round(secs, 1),
               "median logit gap": round(gap, 1)}
        row[f"fgsm@{a.eps} softmax-CE"], _ = _rate(
            attacks.get("fgsm", eps=a.eps, loss="ce"), student, xs, ys)
        row[f"fgsm@{a.eps} logit-margin"], _ = _rate(
            attacks.get("fgsm", eps=a.eps, loss="margin"), student, xs, ys)
        row["jsma softmax"], _ = _rate(attacks.get("jsma", output="probs"), student, xs, ys)
        rate, l2 = _rate(attacks.get("cw-l2", steps=a.cw_steps), student, xs, ys)
        med = l2.median().item() if len(l2) else float("nan")
        l2_plain = med if t is None else l2_plain
        row["cw-l2 logits"], row["cw median L2"] = rate, med
        row["cw L2 ratio"] = med / l2_plain if l2_plain else float("nan")
        row["vanishing-gradient check"] = _fired(student, xs, ys)
        rows.append(row)
        log.info("%s", row)
    print(f"mnist-cnn, first {a.n} mnist5k test images, attacks on the correctly classified ones")
    print(table(rows, list(rows[0])))
    print(save(Path(__file__).parent / "results" / "defenses_repro-distillation.json", rows,
               list(rows[0]), section="distillation", model="mnist-cnn", n=a.n, eps=a.eps,
               epochs=a.epochs, cw_steps=a.cw_steps,
               images="first n mnist5k test images; attacks on the correctly classified"))


def cmd_transforms(a: argparse.Namespace) -> None:
    """Naive PGD vs BPDA + EOT PGD on an input-transformation defense of mnist-cnn."""
    from advlab.evaluation import sanity

    x_te, y_te = advlab.data.load("mnist5k", "test")
    x, y = x_te[:a.n], y_te[:a.n]
    model = zoo.load("mnist-cnn")
    recipes = {
        "bitdepth-1": [defenses.BitDepth(1)],
        "jpeg-q30": [defenses.JPEG(30)],
        "translate2+bitdepth1": [defenses.Translate(max_shift=2), defenses.BitDepth(1)],
        "median3+noise0.1": [defenses.MedianSmoothing(3), defenses.GaussianNoise(0.1)],
    }
    rows = []
    for name, ts in recipes.items():
        d = defenses.Transformed(model, ts, seed=0)
        with torch.no_grad():
            clean = (d(x).argmax(1) == y).float().mean().item()
        naive = attacks.get("pgd", eps=a.eps, steps=a.steps)
        x_naive = naive(d, x, y).x_adv
        adv = d.adaptive(eot_samples=a.eot)
        kw = dict(adv.attack_kwargs, steps=a.steps)
        if adv.attack not in attacks.available():
            log.warning("%s not registered; using pgd on the surrogate", adv.attack)
            adv.attack, kw = "pgd", {"steps": a.steps}
        x_ad = attacks.get(adv.attack, eps=a.eps, **kw)(adv.model, x, y).x_adv
        with torch.no_grad():  # both judged on the deployed (random) defense, same images
            d.reset()
            r_naive = (d(x_naive).argmax(1) == y).float().mean().item()
            d.reset()
            r_adapt = (d(x_ad).argmax(1) == y).float().mean().item()
        fired = [f.name for f in sanity.run_all(d, x, y, eps=a.eps, max_examples=100,
                                                blackbox_queries=300) if f.fired]
        rows.append({"defense": name, "clean": clean, "naive PGD robust": r_naive,
                     f"{adv.attack} BPDA robust": r_adapt, "gap": r_naive - r_adapt,
                     "sanity findings (naive)": ",".join(fired) or "none"})
        log.info("%s", rows[-1])
    print(table(rows, list(rows[0])))
    print(save(Path(__file__).parent / "results" / "defenses_repro-timing.json", rows,
               list(rows[0]), section="timing", data="mnist5k train, 4,000 images",
               ratio="seconds / mean of a plain mnist-cnn epoch just before and after"))


def _pixelcnn(a: argparse.Namespace, x_tr: Tensor) -> tuple[defenses.PixelCNN, float]:
    """The PixelCNN (256 levels), trained once and cached under ``--out``."""
    path = Path(a.out) / f"pixelcnn-h{a.hidden}-l{a.layers}-e{a.epochs}.safetensors"
    pc = defenses.PixelCNN(1, levels=256, hidden=a.hidden, layers=a.layers, first_kernel=5)
    if path.exists():
        return zoo.load_weights(pc, path).eval(), 0.0
    t0 = time.perf_counter()
    pc = defenses.train_pixelcnn(x_tr, levels=256, hidden=a.hidden, layers=a.layers,
                                 first_kernel=5, epochs=a.epochs)
    secs = time.perf_counter() - t0
    zoo.save(pc, path, {"bits_per_dim": pc.train_bits_per_dim, "train_seconds": secs})
    return pc, secs


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def cmd_pixeldefend(a: argparse.Namespace) -> None:
    """PixelDefend on mnist-cnn, Linf eps ``--eps``: oblivious PGD (crafted on the bare
    classifier) vs the adaptive BPDA attack of ``PixelDefend.adaptive()`` (exact purification
    forward, identity backward; the purification is deterministic, so no EOT), for each
    ``--eps-defend``; written to results/defenses_repro-pixeldefend-eps<eps>.json.

    Also measured, to say why the attack fails where it fails: "pixels moved" = the fraction
    of pixels where purify(x_adv) differs from purify(x) (the attacker's real reach after
    purification), and "purified Linf" = the median of max |purify(x_adv) - purify(x)|.

    When eps <= eps_defend, the purifier's window [x'_i - eps_defend, x'_i + eps_defend]
    around every attacked pixel still holds the clean value, and on MNIST (pixels near 0 or 1,
    a confident PixelCNN) the most likely value in it is the clean one: purification undoes
    the perturbation wherever the PixelCNN is sure, whatever the attacker does; only grey
    (edge) pixels remain levers. With eps_defend < eps every pixel can be pushed out of reach.
    """
    x_tr, _ = advlab.data.load("mnist5k", "train")
    x_te, y_te = advlab.data.load("mnist5k", "test")
    x, y = x_te[:a.n], y_te[:a.n]
    model = zoo.load("mnist-cnn")
    pc, train_s = _pixelcnn(a, x_tr)
    with torch.no_grad():
        bpd = pc.nll(x_te[:200]).mean().item()
    x_obl = attacks.get("pgd", eps=a.eps, steps=40)(model, x, y).x_adv
    rows = []
    for eps_d in a.eps_defend:
        d = defenses.PixelDefend(model, pc, eps_defend=eps_d)
        t0 = time.perf_counter()
        with torch.no_grad():
            x_pur = d.preprocess(x)
        purify_s = (time.perf_counter() - t0) / len(x)
        adv = d.adaptive(steps=a.steps)
        t0 = time.perf_counter()
        res = attacks.get(adv.attack, eps=a.eps, **adv.attack_kwargs)(adv.model, x, y)
        attack_s = time.perf_counter() - t0
        with torch.no_grad():
            moved = (d.preprocess(res.x_adv) - x_pur).flatten(1)
        rows.append({
            "eps_defend": eps_d, "clean (defended)": _accuracy(d, x, y),
            "oblivious PGD-40 robust": _accuracy(d, x_obl, y),
            f"BPDA {adv.attack}-{a.steps} ({adv.attack_kwargs.get('loss', 'ce')}) success":
                res.success.float().mean().item(),
            "BPDA robust": _accuracy(d, res.x_adv, y),
            "pixels moved": (moved.abs() > 1e-6).float().mean().item(),
            "purified Linf": moved.abs().amax(1).median().item(),
            "purify s/image": round(purify_s, 3), "attack s": round(attack_s)})
        log.info("%s", rows[-1])
    print(f"mnist-cnn, first {a.n} mnist5k test images, Linf eps {a.eps}; PixelCNN "
          f"h{a.hidden} l{a.layers} {a.epochs} epochs ({train_s:.0f} s to train, 0: cached), "
          f"{bpd:.3f} bits/dim on test; undefended: clean {_accuracy(model, x, y):.3f}, "
          f"PGD-40 robust {_accuracy(model, x_obl, y):.3f}")
    print(table(rows, list(rows[0])))
    print(save(Path(__file__).parent / "results" / f"defenses_repro-pixeldefend-eps{a.eps:g}.json",
               rows, list(rows[0]), section="pixeldefend", model="mnist-cnn", n=a.n, eps=a.eps,
               pixelcnn={"hidden": a.hidden, "layers": a.layers, "epochs": a.epochs,
                         "levels": 256, "first_kernel": 5}, bits_per_dim=bpd,
               train_seconds=train_s, undefended_clean=_accuracy(model, x, y),
               undefended_pgd40_robust=_accuracy(model, x_obl, y),
               images="first n mnist5k test images"))


def cmd_magnet(a: argparse.Namespace) -> None:
    """MagNet (detector + reformer) on mnist-cnn at Linf eps ``--eps``: oblivious PGD (crafted
    on the bare classifier), PGD through the reformer, and the adaptive attack of
    ``Reformer.adaptive()`` with its detector: DetectorAwarePGD (margin and detector terms,
    success judged on the real detector decision; see :mod:`advlab.detectors.adaptive`)
    through model(AE(x)) (Carlini & Wagner, arXiv:1711.08478). Success = the reformed
    prediction is wrong and the detector (threshold at 5% false positives on 500 other clean
    test images) does not flag the input.
    """
    from advlab.detectors import DetectorAwarePGD

    x_tr, y_tr = advlab.data.load("mnist5k", "train")
    x_te, y_te = advlab.data.load("mnist5k", "test")
    x, y, x_cal = x_te[:a.n], y_te[:a.n], x_te[a.n:a.n + 500]
    model = zoo.load("mnist-cnn")
    path = Path(a.out) / "magnet-ae.safetensors"
    ae = defenses.AutoEncoder(filters=16)
    if path.exists():
        zoo.load_weights(ae, path).eval().requires_grad_(False)
    else:
        ae = defenses.train_autoencoder(x_tr)
        zoo.save(ae, path)
    det = defenses.MagNet(ae).fit(model, x_tr, y_tr)
    thr = det.threshold(x_cal, fpr=0.05)
    reformer = det.reformer()
    adv = reformer.adaptive(steps=a.steps)
    runs = {
        "oblivious PGD-40 (bare classifier)":
            lambda: attacks.get("pgd", eps=a.eps, steps=40)(model, x, y).x_adv,
        f"{adv.attack}-{a.steps} ({adv.attack_kwargs['loss']}) through the reformer":
            lambda: attacks.get(adv.attack, eps=a.eps, **adv.attack_kwargs)(adv.model, x,
                                                                            y).x_adv,
        f"adaptive: DetectorAwarePGD-{a.steps} (lambda {a.lam}) through the reformer":
            lambda: DetectorAwarePGD(adv.detector, lam=a.lam, eps=a.eps, steps=a.steps)(
                adv.model, x, y).x_adv,
    }
    rows = [{"attack": "none (clean)", "reformed wrong": 1 - _accuracy(reformer, x, y),
             "detected": (det.score(x) > thr).float().mean().item()}]
    for name, run in runs.items():
        xa = run()
        with torch.no_grad():
            wrong = reformer(xa).argmax(1) != y
        flagged = det.score(xa) > thr
        rows.append({"attack": name, "reformed wrong": wrong.float().mean().item(),
                     "detected": flagged.float().mean().item(),
                     "success (wrong, undetected)": (wrong & ~flagged).float().mean().item()})
        log.info("%s", rows[-1])
    columns = ["attack", "reformed wrong", "detected", "success (wrong, undetected)"]
    print(f"MagNet on mnist-cnn, first {a.n} mnist5k test images, Linf eps {a.eps}")
    print(table(rows, columns))
    print(save(Path(__file__).parent / "results" / f"defenses_repro-magnet-lam{a.lam:g}.json",
               rows, columns, section="magnet", model="mnist-cnn", n=a.n, eps=a.eps,
               steps=a.steps, lam=a.lam, images="first n mnist5k test images"))


def cmd_sanity(a: argparse.Namespace) -> None:
    """sanity.run_all on a zoo model or a cached robust model (``mnist-cnn-trades``: trained
    on first use) at Linf eps ``--eps`` on the first ``--n`` test images; one row per check,
    written to results/defenses_repro-sanity-<model>.json."""
    from advlab.evaluation import sanity

    x_te, y_te = advlab.data.load("mnist5k", "test")
    x, y = x_te[:a.n], y_te[:a.n]
    model = defenses.load_robust(a.model) if a.model in defenses.ROBUST else zoo.load(a.model)
    t0 = time.perf_counter()
    findings = sanity.run_all(model, x, y, eps=a.eps, max_examples=a.n,
                              blackbox_queries=a.queries)
    seconds = time.perf_counter() - t0
    rows = [{"check": f.name, "level": f.level, "message": f.message,
             "evidence": ", ".join(f"{k}={v:.3g}" for k, v in f.evidence.items()),
             "values": {k: float(v) for k, v in f.evidence.items()}} for f in findings]
    clean = _accuracy(model, x, y)
    print(f"{a.model}: clean {clean:.3f} on the first {a.n} mnist5k test "
          f"images; sanity.run_all at Linf eps {a.eps} (Square {a.queries} queries), "
          f"{seconds:.0f} s")
    print(table(rows, ["check", "level", "evidence", "message"]))
    print(save(Path(__file__).parent / "results" / f"defenses_repro-sanity-{a.model}.json", rows,
               ["check", "level", "message", "values"], section="sanity", model=a.model,
               eps=a.eps, n=a.n, images="first n mnist5k test images", queries=a.queries,
               clean=clean, seconds=seconds))


def cmd_binarization(a: argparse.Namespace) -> None:
    """The binarization test (sanity's check_binarization) of PGD-40 (the one run_all tests),
    PGD-100 and APGD-CE-100 on the first ``--n`` test images at Linf eps ``--eps``: how many
    tests each attack fails, and which. Written to
    results/defenses_repro-binarization-<model>.json."""
    from advlab.evaluation.binarization import binarization_test
    from advlab.evaluation.sanity import pgd_on_readout

    x_te, y_te = advlab.data.load("mnist5k", "test")
    x, y = x_te[:a.n], y_te[:a.n]
    model = defenses.load_robust(a.model) if a.model in defenses.ROBUST else zoo.load(a.model)

    def apgd(head: nn.Module, xi: Tensor, z: Tensor, e: float) -> Tensor:
        return attacks.get("apgd-ce", eps=e, steps=100)(head, xi, z).x_adv

    rows = []
    for name, attack in [("PGD-40", pgd_on_readout(40)), ("PGD-100", pgd_on_readout(100)),
                         ("APGD-CE-100", apgd)]:
        r = binarization_test(model, x, y, attack, a.eps)
        failed = ((~r.passed_mask).nonzero().squeeze(1)).tolist()
        rows.append({"attack": name, "tested": r.tested, "passed": r.passed,
                     "failed": r.tested - r.passed, "skipped": r.skipped,
                     "not passed (failed, skipped or misclassified)": failed})
    print(table(rows, ["attack", "tested", "passed", "failed", "skipped"]))
    path = Path(__file__).parent / "results" / f"defenses_repro-binarization-{a.model}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({
        "section": "binarization", "model": a.model, "eps": a.eps, "n": a.n,
        "images": "first n mnist5k test images", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows},
        indent=1) + "\n")
    print(path)


def cmd_timing(a: argparse.Namespace) -> None:
    """Training time of each defense on mnist5k-train (4,000 images), one epoch each, one
    thread, all in this process. On a shared machine the load drifts, so one plain epoch
    (zoo.train) is timed right before and right after each defense and "x plain" is the ratio
    to their mean: the number that carries over between machines (the seconds depend on the
    load)."""
    x_tr, y_tr = advlab.data.load("mnist5k", "train")
    base = zoo.build("mnist-cnn", seed=0)
    runs = {
        "madry PGD-10 (1 epoch)": lambda: defenses.madry_training(base, x_tr, y_tr, epochs=1),
        "trades 10 steps (1 epoch)": lambda: defenses.trades_training(base, x_tr, y_tr,
                                                                      epochs=1),
        "fast FGSM-RS (1 epoch)": lambda: defenses.fast_training(base, x_tr, y_tr, epochs=1),
        "distillation T=100 (1+1 epochs)": lambda: defenses.distill(base, x_tr, y_tr,
                                                                    epochs=1),
        "magnet autoencoder f16 (1 epoch)": lambda: defenses.train_autoencoder(x_tr, epochs=1),
        "pixelcnn h16 l4 (1 epoch)": lambda: defenses.train_pixelcnn(
            x_tr, hidden=16, layers=4, first_kernel=5, epochs=1),
    }

    def seconds(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def plain_epoch() -> float:
        return seconds(lambda: zoo.train(copy.deepcopy(base), x_tr, y_tr, epochs=1, lr=1e-3,
                                         batch_size=64, seed=0))

    rows = []
    for name, fn in runs.items():
        before = plain_epoch()
        secs = seconds(fn)
        plain = (before + plain_epoch()) / 2
        rows.append({"defense": name, "seconds": round(secs, 1),
                     "plain epoch s (around)": round(plain, 1),
                     "x plain": round(secs / plain, 1), "threads": torch.get_num_threads()})
        log.info("%s", rows[-1])
    print(table(rows, list(rows[0])))
    print(save(Path(__file__).parent / "results" / "defenses_repro-timing.json", rows,
               list(rows[0]), section="timing", data="mnist5k train, 4,000 images",
               ratio="seconds / mean of a plain mnist-cnn epoch just before and after"))


def main() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--n", type=int, default=1000, help="test images evaluated")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("advtrain", help="PGD / TRADES / fast adversarial training of mnist-cnn")
    t.add_argument("--method", choices=["madry", "trades", "fast"], default="trades")
    t.add_argument("--eps", type=float, default=0.3)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--beta", type=float, default=6.0)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--ramp", type=float, default=10.0, help="eps ramp epochs")
    t.add_argument("--schedule", default="step")
    t.add_argument("--augment", type=int, default=2, help="random translation (px), 0: none")
    t.add_argument("--val", action="store_true", help="early stopping on a held-out 1/8")
    t.add_argument("--patience", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=cmd_advtrain)
    d = sub.add_parser("distillation", help="defensive distillation story on mnist-cnn")
    d.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 100.0])
    d.add_argument("--epochs", type=int, default=10)
    d.add_argument("--eps", type=float, default=0.3)
    d.add_argument("--cw-steps", type=int, default=100)
    d.set_defaults(fn=cmd_distillation)
    r = sub.add_parser("transforms", help="naive vs BPDA+EOT on transformation defenses")
    r.add_argument("--eps", type=float, default=0.3)
    r.add_argument("--steps", type=int, default=40)
    r.add_argument("--eot", type=int, default=10)
    r.set_defaults(fn=cmd_transforms)
    x = sub.add_parser("pixeldefend", help="PixelDefend: oblivious vs BPDA")
    x.add_argument("--eps", type=float, default=0.3)
    x.add_argument("--eps-defend", type=float, nargs="+", default=[0.3, 32 / 255])
    x.add_argument("--steps", type=int, default=100)
    x.add_argument("--hidden", type=int, default=16)
    x.add_argument("--layers", type=int, default=4)
    x.add_argument("--epochs", type=int, default=3)
    x.set_defaults(fn=cmd_pixeldefend)
    g = sub.add_parser("magnet", help="MagNet: oblivious vs adaptive (detector + reformer)")
    g.add_argument("--eps", type=float, default=0.3)
    g.add_argument("--steps", type=int, default=100)
    g.add_argument("--lam", type=float, default=10.0)
    g.set_defaults(fn=cmd_magnet)
    c = sub.add_parser("sanity", help="sanity.run_all on a zoo or robust model")
    c.add_argument("--model", default="mnist-cnn-trades")
    c.add_argument("--eps", type=float, default=0.3)
    c.add_argument("--queries", type=int, default=1000)
    c.set_defaults(fn=cmd_sanity)
    b = sub.add_parser("binarization", help="binarization test of PGD-40/100, APGD-CE-100")
    b.add_argument("--model", default="mnist-cnn-trades")
    b.add_argument("--eps", type=float, default=0.3)
    b.set_defaults(fn=cmd_binarization)
    m = sub.add_parser("timing", help="training time per defense (one epoch each)")
    m.set_defaults(fn=cmd_timing)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
