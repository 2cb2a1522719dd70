"""The verdict table: each seed paper's headline claim, decided over the seed runs' committed records.

The seed runs (``docs/reproduce.md``) render three benchmarks (``data_seed`` 0, 1, 2: other landmarks) and
train with the same seed; their records are ``results/seed0`` … ``seed2`` (every committed ``seed<N>`` record
counts). A claim "A > B" is decided by one
paired bootstrap over the pooled per-query APs of their test sets (their query landmarks are the groups;
:func:`~retrieval.bootstrap.pooled_bootstrap`), each seed's own interval beside it, and the rule of
``../shared/protocol.md`` (:func:`~retrieval.bootstrap.claim_verdict`) applied to Medium and to Hard.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import numpy as np

from ..bootstrap import claim_verdict, format_interval, paired_bootstrap, pooled_bootstrap, recorded_ap
from ..metrics import medium_hard_mean

SEED_RECORDS = re.compile(r"^seed\d+$")  # the seed runs' record names
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
          "fine-tuned R101-GeM ROxf 64.7 / 38.5 (cirtorch README); its off-the-shelf row: not read here",
          "a real landmark training set (SfM-120k); the synthetic benchmark is the lab's stand-in"),
    Claim("CSA (Ouyang et al. 2021)", "CSA > DBA", "{fs}+csa", ("{fs}+dba",),
          "R-GeM 67.3 / 44.3 → +CSA 78.2 / 59.1 (MCC-WH/CSA README); its DBA row: not read here",
          "the paper's 1,024-candidate lists, 512 anchors, width 768 and 100 epochs (GPU)", ("test", "distractors")),
    Claim("CSA (Ouyang et al. 2021)", "CSA > DBA on the same shortlist", "{fs}+csa", ("{fs}+dba@top*",),
          "(the lab's control for coverage: DBA reorders only CSA's top K)",
          "longer candidate lists at training and test (GPU)", ("test", "distractors")),
    Claim("CSA (Ouyang et al. 2021)", "augmented CSA > CSA", "{fs}+csa-aug", ("{fs}+csa",),
          "78.2 / 59.1 → 80.3 / 62.4 with lists of several extractors (MCC-WH/CSA README)",
          "more, and more different, extractors (e.g. the off-the-shelf network) and as many epochs as the baseline"),
    Claim("CSA (Ouyang et al. 2021)", "augmented CSA > DBA", "{fs}+csa-aug", ("{fs}+dba",),
          "80.3 / 62.4 (augmented; MCC-WH/CSA README)", "as CSA > DBA", ("test", "distractors")),
    Claim("CSA (Ouyang et al. 2021)", "augmented CSA > the strongest classic re-ranker", "{fs}+csa-aug", _CLASSIC,
          "CSA above the classic re-rankers (the paper's comparison table: not read here)", "as CSA > DBA",
          ("test", "distractors")),
    Claim("SuperGlobal (Shao et al. 2023)", "SuperGlobal > the strongest other training-free re-ranker",
          "{fs}+superglobal", _CLASSIC, "SuperGlobal's re-ranking above expansion baselines (its table: not read here)",
          "the paper's backbones (CVNet / DELG ResNet) and 1M distractors", ("test", "distractors")),
    Claim("Token (Wu et al. 2022)", "Token > GeM with Token's recipe (controlled arm)", "token-efficientnet_lite0",
          ("gem-tokenrecipe-efficientnet_lite0",),
          "R101-Token 82.16 / 65.75 (MCC-WH/Token README); a GeM row trained alike: not read here",
          "a schedule past 24 epochs (each arm chose the longest of {6, 12, 24} on validation, Token's score still "
          "rising the most) and the paper's training (all blocks, 512 px, GLDv2-clean, 1,024-d): GPU"),
    Claim("Token (Wu et al. 2022)", "Token > the fully fine-tuned GeM", "token-efficientnet_lite0",
          ("gem-efficientnet_lite0",), "(the lab's reference row: another recipe)",
          "Token trained as long as the GeM network (all blocks, mined tuples)"),
    Claim("Token (Wu et al. 2022)", "Token > ASMK on Token's local features", "token-efficientnet_lite0",
          ("token-efficientnet_lite0+asmk*",), "R101: Token 82.16 / 65.75 vs HOW + ASMK 80.42 / 62.51 (Token README)",
          "HOW's 1,000 features per image and a 65k codebook"),
    Claim("SSP (asymmetric retrieval)", "SSP > regression (distractor anchors)",
          "ssp-distractor-anchors-efficientnet_lite0->gem-efficientnet_lite0",
          ("regression-efficientnet_lite0->gem-efficientnet_lite0",),
          "not read here (the SSP README has no table)",
          "the paper's ~10 epochs on SfM-120k from a random head, PQ anchors of R1M"),
    Claim("SSP (asymmetric retrieval)", "SSP > regression (training-split anchors)",
          "ssp-efficientnet_lite0->gem-efficientnet_lite0", ("regression-efficientnet_lite0->gem-efficientnet_lite0",),
          "(the lab's earlier anchors)", "as above"),
    Claim("SSP (asymmetric retrieval)", "SSP > the strongest of HVS, LCE, AML (distractor anchors)",
          "ssp-distractor-anchors-efficientnet_lite0->gem-efficientnet_lite0",
          tuple(f"{m}-efficientnet_lite0->gem-efficientnet_lite0" for m in ("hvs", "lce", "aml")),
          "not read here", "as SSP > regression"),
    Claim("Deep image retrieval (Gordo et al. 2017)", "multi-resolution R-MAC > one resolution", "rmac@80+160+240",
          ("rmac@160",), "R101 R-MAC Oxford5k 84.09 → 86.07 (deep-retrieval README; classic protocol)",
          "the paper's sizes (550–1,050 px) and ResNet101"),
    Claim("Deep image retrieval (study)", "offline PCA-whitening helps R-MAC", "layer4 pcaw1280", ("layer4",),
          "learned offline, PCA-whitening is part of the R-MAC pipeline (Gordo et al.)",
          "whitening learned on many more images than dimensions (SfM-120k); on 2,400 training images validation "
          "chooses shrinkage at or near 1, i.e. little or no whitening"),
    Claim("Deep image retrieval (study)", "middle layers fused + PCA-whitening > the last layer + PCA-whitening",
          "layer3+layer4 pcaw1280", ("layer4 pcaw1280",), "fusion helps (third-party study: not read here)",
          "larger images (middle stages carry detail at 512 px+)"),
    Claim("Deep image retrieval (distillation)", "distilled student > its start", "student after*",
          ("student before*",),
          "Oxford5k: original 80.45, 3-resolution teacher 82.90, distilled students 74.18–79.45 (third-party "
          "wozhouh/my-deep-retrieval README)",
          "not the budget: validation barely moves between 400 × 2 and 2,400 × 2 images × epochs; the paper's "
          "image sizes (550–1,050 px) and ResNet101"),
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
        parts = [(recorded_ap(rows[a], p), recorded_ap(rows[bs[b_pat]], p), groups) for _, rows, groups, a, bs in seeds]
        pooled = pooled_bootstrap(parts, n_boot=n_boot)
        per_seed = [paired_bootstrap(*part, n_boot=n_boot) for part in parts]
        out["protocols"][p] = dict(pooled=pooled, per_seed=per_seed, verdict=claim_verdict(pooled, per_seed))
    v = {p: out["protocols"][p]["verdict"] for p in PROTOCOLS}
    out["verdict"] = v["medium"] if v["medium"] == v["hard"] else f"M {v['medium']}, H {v['hard']}"
    return out


def seed_records(records: list[dict]) -> list[dict]:
    """The records of the seed runs (names ``seed<N>``, :data:`SEED_RECORDS`), by seed."""
    return sorted((r for r in records if SEED_RECORDS.match(r["name"])), key=lambda r: int(r["name"][4:]))


def render_verdicts(records: list[dict], n_boot: int = 10_000) -> list[str]:
    """The verdict table's markdown lines (empty without a seed record)."""
    seeds = seed_records(records)
    if not seeds:
        return []
    names = ", ".join(f"`{r['name']}`" for r in seeds)
    lines = [f"## Verdicts: the seed papers' claims over {len(seeds)} seed{'s' * (len(seeds) > 1)}", "",
             f"From the records {names} (their sections below: commands, machine, every row). Each seed renders "
             "its own benchmark (`data_seed` = `seed`: other landmarks) and trains with that seed. Δ = A − B, mAP "
             "×100, Medium and Hard; the pooled interval is one paired bootstrap (10,000 resamples) over the query "
             "landmarks of the seeds' test sets together; per seed: each seed's mean Δ. **holds**: the pooled "
             "interval lies above 0 and every seed's Δ is positive; **refuted**: the pooled interval lies below 0; "
             "otherwise **inconclusive** (`../shared/protocol.md`). Where B lists several rows, the strongest of them "
             "over the seeds is taken (named). Settings: each seed's own validation benchmark chose them (CSA's "
             "epochs and lr: the sweep recorded in `results/demo/selection/`).",
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
