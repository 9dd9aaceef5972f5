"""Label-only and score-based attacks of blackB against the peers, on mnist-cnn (mnist5k test).

Usage: python benchmarks/blackbox_label.py [--n 20] [--queries 1000] [--part hsj,sub,gen,zoom]
           [--sub paper,ensemble,ensemble-seed1,ensemble-seed2,cnn,cnn-wd,ensemble-no-wd,
                  ensemble-paper-seeds]

- HopSkipJump: median L2 after the same number of queries per example, advlab vs ART's
  HopSkipJump and foolbox's HopSkipJumpAttack (peers' queries counted on the model, rows / N;
  advlab's budget is set to the peers' measured mean).
- Substitute: transfer success of FGSM eps 0.3 with <= 10,000 oracle labels (paper setting:
  150 seeds, 6 rounds; and 1,250 seeds, 3 rounds with an MLP+CNN ensemble, its other seeds
  and the ablation of each change, chosen with --sub); the table goes to
  results/blackbox_label-substitute.json.
- GenAttack (Linf 0.3) and AutoZOOM (minimum L2): success and median queries.

HopSkipJump fairness: ART, foolbox and advlab all query one Counted model (rows / N, the
peers' own internal checks included; advlab's budget is the peer's count minus 2, left for
its evaluator's probe and final success check, which the counter also sees). The peers run
the iterations whose estimated cost fits --queries (peer_iterations); advlab gets each
peer's measured mean as its per-example budget. Only clean-correct images are attacked and
success is re-checked on the returned images, so a returned unchanged input is a failure.
ART returns the point after its last step, not projected back to the boundary; foolbox
queries every example of the batch until all step searches succeed (and re-verifies its
points): both are their implementations' costs, counted as they happen.

``--part hsj`` writes its table to results/blackbox_label-hsj-mnist-cnn-<queries>.json
(with the date, torch version and load average; ``--n 20`` at 1,000 and 5,000 queries there).
advlab with its default init ("noise", the paper's) beats both peers at both budgets;
init="auto" (nearest adversarial batch image first) is smaller still. advlab keeps a new
boundary point only when it is closer to x than the current one, where the paper's code
accepts every new point, so the distance it returns never grows from one iteration to the
next.

``--part sub`` (FGSM eps 0.3 from the substitute, transferred to test images 150..999;
transfer re-checked on the model; transfer_clean_correct: among the images the model gets
right) writes one row per --sub setting to results/blackbox_label-substitute.json, a run of
some settings replacing theirs and keeping the others: the paper's setting, the 1,250-seed
MLP+CNN ensemble with seeds 0, 1 and 2, and the ablation of each change (one CNN with and
without weight decay, the ensemble without weight decay, the ensemble on the paper's 150
seeds and 6 rounds).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from common import RESULTS, Counted, art_classifier, have, save, table, zoo_setup

import advlab


def median_l2(x, x_adv, ok) -> float:  # noqa: ANN001
    d = (x_adv - x).flatten(1).norm(dim=1)[ok]
    return statistics.median(d.tolist()) if len(d) else float("nan")


class Float32(torch.nn.Module):
    """ART's HopSkipJump hands float64 arrays to the model: cast them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float())


def peer_iterations(queries: int, init_evals: int = 100, overhead: int = 50,
                    per_iter: int = 20) -> int:
    """The HSJ iterations whose cost fits ``queries``: B_0 sqrt(t) gradient probes plus about
    ``per_iter`` for the step and binary searches per iteration, ``overhead`` for the start.
    Only sizes the peers' runs; every comparison uses the peer's *measured* queries."""
    t, cost = 0, overhead
    while cost + init_evals * math.sqrt(t + 1) + per_iter <= queries:
        t += 1
        cost += init_evals * math.sqrt(t) + per_iter
    return max(1, t)


def hsj_rows(model, x, y, queries: int) -> list[dict]:  # noqa: ANN001
    """Every contender queries the same Counted model; queries/ex = rows / N counted there
    (advlab's budget: the peer's count);
    success is re-checked on the returned images (x holds only clean-correct examples, so a
    peer that returns its input unchanged on failure is not counted as a success)."""
    rows = []
    counted = Counted(Float32(model)).eval()
    n, steps = len(x), peer_iterations(queries)
    peers = []
    if have("art"):
        from art.attacks.evasion import HopSkipJump

        def art_run() -> torch.Tensor:
            clf = art_classifier(counted, tuple(x.shape[1:]))
            atk = HopSkipJump(clf, targeted=False, norm=2, max_iter=steps,
                              max_eval=10_000, init_eval=100, init_size=100, verbose=False)
            return torch.as_tensor(atk.generate(x.numpy()))
        peers.append(("ART HopSkipJump", art_run))
    if have("foolbox"):
        import foolbox as fb

        def fb_run() -> torch.Tensor:
            fmodel = fb.PyTorchModel(counted, bounds=(0, 1))
            atk = fb.attacks.HopSkipJumpAttack(steps=steps)
            return atk.run(fmodel, x, y)
        peers.append(("foolbox HopSkipJump", fb_run))

    def measured(name: str, x_adv: torch.Tensor) -> dict:
        with torch.no_grad():
            ok = model(x_adv).argmax(1) != y
        return {"attack": name, "queries/ex": counted.rows / n, "success": ok.float().mean().item(),
                "median_l2": median_l2(x, x_adv, ok)}

    for name, fn in peers:
        counted.reset()
        rows.append(measured(f"{name} ({steps} iterations)", fn().to(x)))
        # advlab's Attack also runs the evaluator's checks through the model (a probe of a
        # few rows, the final success check): counted here too, so its budget leaves 2 for them
        budget = int(rows[-1]["queries/ex"]) - 2
        for init in ("noise", "auto"):
            counted.reset()
            res = advlab.attacks.get("hopskipjump", max_queries=budget, init=init)(counted, x, y)
            assert int(res.queries.max()) <= budget and counted.rows <= (budget + 2) * n
            rows.append(measured(f"advlab hopskipjump ({init}), budget {budget}", res.x_adv))
    return rows


def clean_correct(model, n: int) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """The first n mnist5k test images that the model classifies correctly."""
    x, y = advlab.data.load("mnist5k", split="test")
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


_ENSEMBLE = {"rounds": 3, "arch": ("mlp", "cnn"), "width": (50, 16), "weight_decay": 1e-3}
#: --sub settings: label, keyword arguments of the attack, seed images (test150: the first 150
#: test images; train1250: the first 1,250 train images)
SUBSTITUTE = {
    "paper": ("paper: 150 seeds, 6 rounds, CNN", {}, "test150"),
    "ensemble": ("1250 seeds, 3 rounds, MLP+CNN", _ENSEMBLE, "train1250"),
    "ensemble-seed1": ("1250 seeds, 3 rounds, MLP+CNN, seed 1", {**_ENSEMBLE, "seed": 1},
                       "train1250"),
    "ensemble-seed2": ("1250 seeds, 3 rounds, MLP+CNN, seed 2", {**_ENSEMBLE, "seed": 2},
                       "train1250"),
    "cnn": ("1250 seeds, 3 rounds, CNN, no weight decay", {"rounds": 3}, "train1250"),
    "cnn-wd": ("1250 seeds, 3 rounds, CNN, weight decay 1e-3",
               {"rounds": 3, "weight_decay": 1e-3}, "train1250"),
    "ensemble-no-wd": ("1250 seeds, 3 rounds, MLP+CNN, no weight decay",
                       {**_ENSEMBLE, "weight_decay": 0.0}, "train1250"),
    "ensemble-paper-seeds": ("150 seeds, 6 rounds, MLP+CNN, weight decay 1e-3",
                             {**_ENSEMBLE, "rounds": 6}, "test150"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--part", default="hsj,sub,gen,zoom")
    ap.add_argument("--sub", default="paper,ensemble", help="substitute settings (SUBSTITUTE)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, x, y = zoo_setup("mnist-cnn", args.n)
    parts = args.part.split(",")
    if "hsj" in parts:
        xc, yc = clean_correct(model, args.n)
        rows, columns = hsj_rows(model, xc, yc, args.queries), ["attack", "queries/ex",
                                                               "success", "median_l2"]
        print(table(rows, columns))
        print(save(RESULTS / f"blackbox_label-hsj-mnist-cnn-{args.queries}.json", rows, columns,
                   section="hsj", model="mnist-cnn", n=len(xc), queries=args.queries,
                   images="first correctly classified of mnist5k test"))
    if "sub" in parts:
        xs, _ = advlab.data.load("mnist5k", split="train")
        xt, yt = advlab.data.load("mnist5k", split="test")
        seeds = {"test150": xt[:150], "train1250": xs[:1250]}
        rows = []
        for key in args.sub.split(","):
            label, kw, seed = SUBSTITUTE[key]
            atk = advlab.attacks.get("substitute", seed_x=seeds[seed], holdout_x=xt[150:], **kw)
            res = atk(model, xt[150:], yt[150:])
            with torch.no_grad():  # re-checked on the model; clean errors counted apart
                correct = model(xt[150:]).argmax(1) == yt[150:]
                fooled = model(res.x_adv).argmax(1) != yt[150:]
            assert int(res.queries.sum()) == res.info["oracle_labels"]
            rows.append({"setting": label, "key": key, "seeds": seed, **kw,
                         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "loadavg": os.getloadavg(), "labels": res.info["oracle_labels"],
                         "holdout_agree": res.info["holdout_agreement"],
                         "transfer": fooled.float().mean().item(),
                         "transfer_clean_correct": fooled[correct].float().mean().item()})
        print(table(rows, ["setting", "labels", "holdout_agree", "transfer",
                           "transfer_clean_correct"]))
        # one row per setting: a run of some settings replaces theirs and keeps the others
        path = Path(__file__).parent / "results" / "blackbox_label-substitute.json"
        path.parent.mkdir(exist_ok=True)
        old = json.loads(path.read_text())["rows"] if path.exists() else []
        done = {r["key"] for r in rows}
        rows = [r for r in old if r["key"] not in done] + rows
        rows.sort(key=lambda r: list(SUBSTITUTE).index(r["key"]))
        path.write_text(json.dumps({
            "section": "substitute", "model": "mnist-cnn", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "attack": "FGSM eps 0.3 from the substitute",
            "n": len(xt) - 150, "images": "mnist5k test 150..", "rows": rows},
            indent=1, default=list) + "\n")
        print(path)
    if "gen" in parts:
        res = advlab.attacks.get("genattack")(model, x, y)
        print(f"genattack linf 0.3: success {res.success_rate:.3f}, median queries (successes) "
              f"{res.queries[res.success].float().median().item():.0f}")
    if "zoom" in parts:
        res = advlab.attacks.get("autozoom", max_queries=args.queries)(model, x, y)
        first = res.info["first_success_queries"]
        print(f"autozoom: success {res.success_rate:.3f}, median queries to first success "
              f"{first[first >= 0].float().median().item():.0f}, median L2 after "
              f"{args.queries} {median_l2(x, res.x_adv, res.success):.3f}")


if __name__ == "__main__":
    main()
