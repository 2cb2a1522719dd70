"""The verdict table: each seed paper's headline claim, decided over the three seed runs' committed records.

The seed runs (``docs/reproduce.md``) render three benchmarks (``data_seed`` 0, 1, 2: other landmarks) and
train with the same seed; their records are ``results/seed0`` … ``seed2``. A claim "A > B" is decided by one
paired bootstrap over the pooled per-query APs of the three test sets (their query landmarks are the groups;
:func:`~retrieval.bootstrap.pooled_bootstrap`), each seed's own interval beside it, and the rule of
``../shared/protocol.md`` (:func:`~retrieval.bootstrap.claim_verdict`) applied to Medium and to Hard.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from ..bootstrap import claim_verdict, format_interval, paired_bootstrap, pooled_bootstrap
from ..metrics import medium_hard_mean

SEED_RECORDS = ("seed0", "seed1", "seed2")
PROTOCOLS = ("medium", "hard")


@dataclass(frozen=True)
class Claim:
    """A claim "``a`` > ``b``" of a paper. ``a`` / ``b``: row names of a record (``{fs}``: 03's first stage;
    glob patterns allowed, the shortest match taken); several ``b``: the strongest of them (highest mean
    of Medium and Hard mAP over the seeds, the hardest test for ``a``). ``sets``: "test" and / or
    "distractors" (the test set with the rendered distractors). ``reported``: the paper's own figure;
    ``decide``: what would change the lab's verdict."""
    paper: str
    claim: str
    a: str
    b: tuple[str, ...]
    reported: str
    decide: str
    sets: tuple[str, ...] = ("test",)


_CLASSIC = tuple(f"{{fs}}+{m}" for m in ("aqe", "alpha_qe", "dba", "alpha_dba", "aqe+dba", "alpha_qe+alpha_dba",
                                         "diffusion"))
CLAIMS = (
    Claim("Radenović et al. 2018 (cirtorch)", "fine-tuned GeM > its ImageNet start", "gem-efficientnet_lite0",
          ("gem-efficientnet_lite0-imagenet",),
          "ResNet101 GeM: off-the-shelf → fine-tuned on SfM-120k, a large gain (see `docs/results.md` of the "
          "published networks)",
          "a real landmark training set; the synthetic benchmark is only the lab's stand-in"),
    Claim("CSA (Ouyang et al. 2021)", "CSA > DBA", "{fs}+csa", ("{fs}+dba",),
          "CSA re-ranks R-GeM's top 1,024 above the classic re-rankers on ROxf / RPar",
          "the paper's 1,024-candidate lists, 512 anchors, width 768 and 100 epochs (GPU)",
          ("test", "distractors")),
    Claim("CSA (Ouyang et al. 2021)", "CSA > DBA on the same shortlist", "{fs}+csa", ("{fs}+dba@top*",),
          "(not reported: the lab's control for coverage)",
          "longer candidate lists at training and test (GPU)", ("test", "distractors")),
    Claim("CSA (Ouyang et al. 2021)", "augmented CSA > CSA", "{fs}+csa-aug", ("{fs}+csa",),
          "training on several extractors' lists improves the baseline model",
          "more and more different extractors (e.g. the off-the-shelf network), as many epochs as the baseline"),
    Claim("CSA (Ouyang et al. 2021)", "augmented CSA > DBA", "{fs}+csa-aug", ("{fs}+dba",),
          "as CSA > DBA", "as CSA > DBA", ("test", "distractors")),
    Claim("CSA (Ouyang et al. 2021)", "augmented CSA > the strongest classic re-ranker", "{fs}+csa-aug", _CLASSIC,
          "CSA above αQE, DBA and diffusion", "as CSA > DBA", ("test", "distractors")),
    Claim("SuperGlobal (Shao et al. 2023)", "SuperGlobal > the strongest other training-free re-ranker",
          "{fs}+superglobal", _CLASSIC,
          "SuperGlobal's re-ranking above αQE / DBA-style expansion on ROxf / RPar",
          "the paper's backbones (CVNet / DELG ResNet) and 1M distractors", ("test", "distractors")),
    Claim("Token (Wu et al. 2022)", "Token > GeM with Token's recipe (controlled arm)", "token-efficientnet_lite0",
          ("gem-tokenrecipe-efficientnet_lite0",),
          "Token above its GeM baseline trained alike",
          "the paper's schedule (all blocks, 512 px, GLDv2): a longer one chosen on validation"),
    Claim("Token (Wu et al. 2022)", "Token > the fully fine-tuned GeM", "token-efficientnet_lite0",
          ("gem-efficientnet_lite0",), "(the lab's reference row: a different recipe)",
          "Token trained as long as the GeM network (all blocks, mined tuples)"),
    Claim("Token (Wu et al. 2022)", "Token ≥ ASMK on the same local features", "token-efficientnet_lite0",
          ("token-efficientnet_lite0+asmk*",), "Token's global descriptor above HOW + ASMK",
          "HOW's 1,000 features per image and a 65k codebook"),
    Claim("SSP (asymmetric retrieval)", "SSP > regression", "ssp-efficientnet_lite0->gem-efficientnet_lite0",
          ("regression-efficientnet_lite0->gem-efficientnet_lite0",),
          "SSP above feature regression in the asymmetric setting",
          "the paper's ~10 epochs on SfM-120k from a random head, PQ anchors of R1M"),
    Claim("SSP (asymmetric retrieval)", "SSP > the strongest of HVS, LCE, AML",
          "ssp-efficientnet_lite0->gem-efficientnet_lite0",
          tuple(f"{m}-efficientnet_lite0->gem-efficientnet_lite0" for m in ("hvs", "lce", "aml")),
          "SSP above HVS, LCE and AML", "as SSP > regression"),
    Claim("Deep image retrieval (Gordo et al. 2017)", "multi-resolution R-MAC > one resolution", "rmac@80+160+240",
          ("rmac@160",), "multi-resolution descriptors improve R-MAC",
          "the paper's resolutions (550–1,050 px) and ResNet101"),
    Claim("Deep image retrieval (distillation)", "distilled student > its start", "student after*",
          ("student before*",), "the student approaches its multi-resolution teacher",
          "a distillation budget chosen on validation (more images and epochs)"),
)


def _dataset(metrics: dict, kind: str) -> str | None:
    """The test set's key (``kind`` "test") or the test set with distractors ("distractors") of a record."""
    keys = [d for d in metrics if ("+" in d) == (kind == "distractors")]
    return keys[0] if len(keys) == 1 else None


def _first_stage(rows: dict) -> str | None:
    refs = {(r.get("recorded") or {}).get("reference") for r in rows.values()
            if (r.get("recorded") or {}).get("notebook") == "03_rerank"}
    refs.discard(None)
    return refs.pop() if len(refs) == 1 else None


def _row(rows: dict, pattern: str) -> str | None:
    """The row ``pattern`` names (``{fs}``: 03's first stage; a glob: its shortest match, rows kept only as
    reference points, ``(before selection)``, left out); None when the record has none."""
    if "{fs}" in pattern:
        fs = _first_stage(rows)
        if fs is None:
            return None
        pattern = pattern.replace("{fs}", fs)
    found = sorted((len(n), n) for n in rows if fnmatch.fnmatchcase(n, pattern.replace("[", "[[]"))
                   and "before selection" not in n and rows[n].get("ap"))
    return found[0][1] if found else None


def _ap(res: dict, protocol: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in res["ap"][protocol]], dtype=float)


def evaluate_claim(claim: Claim, records: list[dict], kind: str = "test", n_boot: int = 10_000) -> dict | None:
    """The claim on ``records`` (one per seed, :func:`~retrieval.run.report.load_records` items): per
    protocol the pooled interval of A − B, each seed's interval and the verdict, and the B taken (the
    strongest of ``claim.b``). None when a record lacks the set or a row (its name in ``"missing"`` then)."""
    seeds = []
    for rec in records:
        dataset = _dataset(rec["metrics"], kind)
        rows = rec["metrics"].get(dataset) or {}
        groups = ((rec.get("benchmark") or {}).get("query_landmarks") or {}).get((dataset or "").split("+")[0])
        a = _row(rows, claim.a)
        bs = {pat: _row(rows, pat) for pat in claim.b}
        if dataset is None or groups is None or a is None or None in bs.values():
            return dict(missing=f"{rec['name']}: " + (f"no {kind} set" if dataset is None else "no query landmarks"
                                                      if groups is None else "no row " + ", ".join(
                                                          p for p, n in [(claim.a, a), *bs.items()] if n is None)))
        seeds.append((rec["name"], rows, groups, a, bs))
    # the strongest B over the seeds (mean of their Medium / Hard mean): the hardest comparison for A
    b_pat = max(claim.b, key=lambda pat: np.mean([medium_hard_mean(rows[bs[pat]]) for _, rows, _, _, bs in seeds]))
    out = dict(a=[s[3] for s in seeds], b=[s[4][b_pat] for s in seeds], b_pattern=b_pat, protocols={},
               n_groups=sum(len(set(g)) for _, _, g, _, _ in seeds), seeds=[s[0] for s in seeds])
    for p in PROTOCOLS:
        parts = [(_ap(rows[a], p), _ap(rows[bs[b_pat]], p), groups) for _, rows, groups, a, bs in seeds]
        pooled = pooled_bootstrap(parts, n_boot=n_boot)
        per_seed = [paired_bootstrap(*part, n_boot=n_boot) for part in parts]
        out["protocols"][p] = dict(pooled=pooled, per_seed=per_seed, verdict=claim_verdict(pooled, per_seed))
    v = {p: out["protocols"][p]["verdict"] for p in PROTOCOLS}
    out["verdict"] = v["medium"] if v["medium"] == v["hard"] else f"M {v['medium']}, H {v['hard']}"
    return out


def seed_records(records: list[dict]) -> list[dict] | None:
    """The records of the three seed runs (:data:`SEED_RECORDS`), or None while one is not committed."""
    by_name = {r["name"]: r for r in records}
    return [by_name[n] for n in SEED_RECORDS] if all(n in by_name for n in SEED_RECORDS) else None


def render_verdicts(records: list[dict], n_boot: int = 10_000) -> list[str]:
    """The verdict table's markdown lines (empty without the three seed records)."""
    seeds = seed_records(records)
    if seeds is None:
        return []
    lines = ["## Verdicts: the seed papers' claims over three seeds", "",
             f"From the records {', '.join(f'`{n}`' for n in SEED_RECORDS)} (their sections below: commands, "
             "machine, every row). Each seed renders its own benchmark (`data_seed` = `seed`: other landmarks) and "
             "trains with that seed. Δ = A − B, mAP ×100, Medium and Hard; the pooled interval is one paired "
             "bootstrap (10,000 resamples) over the query landmarks of the three test sets together; per seed: "
             "each seed's mean Δ. **holds**: the pooled interval lies above 0 and every seed's Δ is positive; "
             "**refuted**: the pooled interval lies below 0; otherwise **inconclusive** (`../shared/protocol.md`). "
             "Where B lists several rows, the strongest of them over the seeds is taken (named). Settings: each "
             "seed's own validation benchmark chose them (CSA's epochs and lr: `seed0`'s sweep, `results/demo`).",
             "", "| paper | claim (A > B) | set | paper's figure | ΔM pooled [95 % CI] | ΔH pooled [95 % CI] | "
             "ΔM / ΔH per seed | verdict | what would change it |",
             "| --- | --- | --- | --- | ---: | ---: | --- | --- | --- |"]
    for claim in CLAIMS:
        for kind in claim.sets:
            res = evaluate_claim(claim, seeds, kind, n_boot=n_boot)
            where = "test" if kind == "test" else "test + distractors"
            if res is None or "missing" in res:
                lines.append(f"| {claim.paper} | {claim.claim} | {where} | {claim.reported} | - | - | - | "
                             f"not measured ({res['missing'] if res else 'no record'}) | {claim.decide} |")
                continue
            pr = res["protocols"]
            per = ", ".join(f"{100 * m['diff']:+.1f} / {100 * h['diff']:+.1f}"
                            for m, h in zip(pr["medium"]["per_seed"], pr["hard"]["per_seed"]))
            b = f" (B: `{res['b'][0]}`)" if len(claim.b) > 1 else ""
            lines.append(f"| {claim.paper} | {claim.claim}{b} | {where} ({res['n_groups']} landmarks) | "
                         f"{claim.reported} | {format_interval(pr['medium']['pooled'])} | "
                         f"{format_interval(pr['hard']['pooled'])} | {per} | **{res['verdict']}** | {claim.decide} |")
    return lines + [""]
