"""The claims check: every number the README and the docs' experiment pages quote is found in a committed results
file, and no quoted interval is worded against its verdict.

Marker convention (HTML comments, which the docs site does not render):

- ``<!-- src: FILE [FILE ...] -->`` in a paragraph, table or ``text`` block names the committed files its numbers
  come from (repository paths). A block holding nothing but markers sets the sources of every following block
  up to the next heading (a marker-only ``nosrc`` block exempts them); a block's own markers add to them.
- ``<!-- nosrc: REASON -->``: a block whose numbers have no results file (a command's budget, a wall time), said
  so on the page. Its numbers are not checked; the test lists every such block.
- ``<!-- all-resolved: FILE KEY -->``: the block claims to quote every resolved ``KEY`` of ``FILE`` (a mean
  ``KEY`` whose 95% half-width ``KEY_ci95`` excludes 0); each must be quoted there.

Rules, per checked block:

1. sourced: each number (prose, tables, ``text`` blocks; not code spans, links' targets or identifiers such as
   ``q0.9``) is found, at the precision it is quoted, in one of the block's sources (absolute values; a quoted
   percentage may be a fraction there);
2. bounded: an interval ``a ± h`` quoted for a bounded quantity (ρ, an entropy, an ESS, a fraction of episodes)
   stays inside the quantity's range;
3. inequalities: ``a ≤ b`` (or <, ≥, >) where the sources give ``a`` a 95% half-width holds for the whole
   interval, not only the mean;
4. verdict words: a clause that calls its one interval "unresolved" has an interval containing 0;
5. seed counts ("5 seeds", "three-seed") are seed counts of the sources;
6. target names: "k× the best" quotes a ``xk`` target, not ``nk`` (normalized: 0 the data's worst, 1 its best);
7. vocabulary: %BC is learned, never "the exact quantilizer"; a file called per-episode has an episode column.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Where the check applies: whole experiment pages, and the named sections of the others.
SECTIONS = {"README.md": "## Results at a glance", "docs/getting-started.md": "## The demo",
            "docs/guide/baselines.md": "## Comparison on CartPole"}


def checked_pages() -> dict[str, str]:
    """Repository path → the checked text (a whole experiment page, or one section of another page)."""
    out = {}
    for path in sorted((REPO / "docs" / "experiments").glob("*.md")):
        out[path.relative_to(REPO).as_posix()] = path.read_text(encoding="utf-8")
    for rel, heading in SECTIONS.items():
        out[rel] = section((REPO / rel).read_text(encoding="utf-8"), heading)
    return out


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level ("" when absent)."""
    level = len(heading) - len(heading.lstrip("#"))
    lines, out, inside = text.splitlines(), [], False
    for line in lines:
        if line.strip() == heading:
            inside = True
            continue
        m = re.match(r"^(#+) ", line)
        if inside and m and len(m.group(1)) <= level:
            break
        if inside:
            out.append(line)
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Blocks and markers

MARKER = re.compile(r"<!--\s*(src|nosrc|all-resolved):\s*(.*?)\s*-->", re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)


@dataclass
class Block:
    page: str
    line: int
    text: str
    sources: list[str] = field(default_factory=list)
    nosrc: str | None = None
    all_resolved: list[tuple[str, str]] = field(default_factory=list)


def blocks(page: str, text: str) -> list[Block]:
    """The page's blocks (paragraphs, list items, tables, fenced blocks) with their sources."""
    raw: list[tuple[int, str]] = []
    cur: list[str] = []
    start = 0
    fence = False
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if not fence:
                if cur:
                    raw.append((start, "\n".join(cur)))
                cur, start, fence = [line], i, True
            else:
                cur.append(line)
                raw.append((start, "\n".join(cur)))
                cur, fence = [], False
            continue
        if fence:
            cur.append(line)
            continue
        new_item = re.match(r"^\s*(- |\d+\. |#)", line) or (line.startswith("|") and cur and not cur[-1].startswith("|"))
        if not line.strip() or new_item:
            if cur:
                raw.append((start, "\n".join(cur)))
            cur, start = ([line], i) if line.strip() else ([], i)
            continue
        if not cur:
            start = i
        cur.append(line)
    if cur:
        raw.append((start, "\n".join(cur)))
    out, default, default_nosrc = [], [], None
    for line, body in raw:
        if body.startswith("#"):
            default, default_nosrc = [], None
            continue
        markers = MARKER.findall(body)
        if markers and not COMMENT.sub("", body).strip():
            default = [s for kind, v in markers if kind == "src" for s in v.split()]
            default_nosrc = next((v for kind, v in markers if kind == "nosrc"), None)
            continue
        b = Block(page, line, body, sources=list(default), nosrc=default_nosrc)
        for kind, value in markers:
            if kind == "src":
                b.sources += value.split()
            elif kind == "nosrc":
                b.nosrc = value
            else:
                file, key = value.split()
                b.all_resolved.append((file, key))
        out.append(b)
    return out


# ----------------------------------------------------------------------------------------------
# Numbers

MINUS = "−"
QUOTED = re.compile(r"(?<![\w.])([+\-−]?)(\d+(?:\.\d+)?)(k|M)?(?![\w])(%?)")
SOURCE_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
INTERVAL = re.compile(r"([+\-−]?\d+(?:\.\d+)?)\s*±\s*(\d+(?:\.\d+)?)")
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}


def prose(text: str) -> str:
    """The text whose numbers are quotes: no comments, code spans, link targets or URLs; ``text`` blocks kept."""
    text = COMMENT.sub(" ", text)
    text = re.sub(r"^```(?!text).*?^```", " ", text, flags=re.S | re.M)
    text = re.sub(r"^```text|^```", " ", text, flags=re.M)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "] ", text)
    text = re.sub(r"https?://\S+", " ", text)
    return text


@dataclass(frozen=True)
class Quote:
    value: float  # absolute
    decimals: int
    percent: bool
    text: str


def quotes(text: str) -> list[Quote]:
    out = []
    for m in QUOTED.finditer(prose(text)):
        sign, digits, scale, pct = m.groups()
        value = float(digits) * {"k": 1e3, "M": 1e6, None: 1.0}[scale]
        decimals = 0 if scale else len(digits.partition(".")[2])
        out.append(Quote(value, decimals, bool(pct), m.group(0)))
    return out


class Source:
    """A committed file's numbers, the (mean, half-width) pairs it gives, its JSON records and seed counts."""

    def __init__(self, rel: str):
        self.rel = rel
        path = REPO / rel
        if not path.is_file():
            raise FileNotFoundError(f"{rel}: no such committed file")
        self.text = path.read_text(encoding="utf-8")
        self.records: list[dict] = []
        self.intervals: list[tuple[float, float]] = [(float(a.replace(MINUS, "-")), float(h)) for a, h in INTERVAL.findall(self.text)]
        self.seed_counts: set[int] = {len(re.findall(r"\d+", m)) for m in re.findall(r"seeds\W*\s*\[([\d,\s]+)\]", self.text)}
        if rel.endswith(".json"):
            self._walk(json.loads(self.text.replace("NaN", "null")))
        elif rel.endswith(".csv"):
            rows = list(csv.DictReader(io.StringIO(self.text)))
            self.records = [{k: _num(v) for k, v in r.items()} for r in rows]
            for r in self.records:
                self._pairs(r)
        self.numbers = sorted({abs(float(x)) for x in SOURCE_NUMBER.findall(self.text)})
        self.percents = sorted({100 * x for x in self.numbers if x <= 1.0})

    def _walk(self, node) -> None:
        if isinstance(node, dict):
            self.records.append(node)
            self._pairs(node)
            if isinstance(node.get("seeds"), list):
                self.seed_counts.add(len(node["seeds"]))
            elif isinstance(node.get("seeds"), (int, float)) and node["seeds"] is not None:
                self.seed_counts.add(int(node["seeds"]))
            for v in node.values():
                self._walk(v)
        elif isinstance(node, list):
            for v in node:
                self._walk(v)

    def _pairs(self, r: dict) -> None:
        for k, v in r.items():
            h = r.get(f"{k}_ci95")
            if isinstance(v, float | int) and isinstance(h, float | int) and math.isfinite(v) and math.isfinite(h):
                self.intervals.append((float(v), float(h)))
        if isinstance(r.get("seeds"), (int, float)) and not isinstance(r.get("seeds"), bool) and r["seeds"] == r["seeds"]:
            self.seed_counts.add(int(r["seeds"]))

    def has(self, q: Quote) -> bool:
        tol = 0.5 * 10 ** -q.decimals + 1e-9
        pools = [self.numbers, self.percents] if q.percent else [self.numbers]
        for pool in pools:
            i = bisect.bisect_left(pool, q.value - tol)
            if i < len(pool) and pool[i] <= q.value + tol:
                return True
        return False


def _num(v: str):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


@lru_cache(maxsize=None)
def source(rel: str) -> Source:
    return Source(rel)


def _close(x: float, quoted: str) -> bool:
    decimals = len(quoted.partition(".")[2])
    return abs(abs(x) - abs(float(quoted.replace(MINUS, "-")))) <= 0.5 * 10 ** -decimals + 1e-9


# ----------------------------------------------------------------------------------------------
# Rules

BOUNDED = [(re.compile(r"\bρ|spearman|rank correlation", re.I), (-1.0, 1.0), "a rank correlation"),
           (re.compile(r"component entropy", re.I), (0.0, math.inf), "an entropy over the data's components"),
           (re.compile(r"\bESS\b|effective sample size"), (1.0, math.inf), "an effective sample size"),
           (re.compile(r"fraction|share of|of (its |the )?episodes|probability", re.I), (0.0, 1.0), "a fraction")]
UNBOUNDED = re.compile(r"return|cost|gain|difference|higher|lower|achieved|requested|\bMAE\b|\bbias\b|\bKL\b|nats|slope|reward|[+−-]\s*$", re.I)
SENTENCE = re.compile(r"(?<=[.;:!?])\s+(?=[A-Z(*`])|\n(?=\s*[-|])")
INEQUALITY = re.compile(r"([+\-−]?\d+(?:\.\d+)?)\s*(≤|<|≥|>)\s*([+\-−]?\d+(?:\.\d+)?)")
_N = r"(\d+|one|two|three|four|five|six|seven|eight|nine|ten)"
SEEDS = re.compile(rf"\b{_N}-seed\b|\bover (?:the )?{_N} (?:training )?seeds\b|\({_N} (?:training )?seeds\)", re.I)
SCALE = re.compile(r"(\d+(?:\.\d+)?)×\s*the\s*(?:data's\s*)?best", re.I)
TERMS = [(re.compile(r"%BC[^.;]*\bthe exact quantilizer|the exact quantilizer[^.;]*%BC"),
          "%BC is learned (behaviour cloning on the top episodes), not the exact quantilizer (an oracle)")]
PER_EPISODE = re.compile(r"per-episode[^;]{0,60}?\]\(([^)]+\.(?:csv|json|jsonl))\)|\]\(([^)]+\.(?:csv|json|jsonl))\)[^;]{0,60}?per-episode")


def clauses(text: str) -> list[str]:
    return [s for s in SENTENCE.split(prose(text)) if s.strip()]


def _bounds_for(context: str):
    """The range of the quantity an interval is quoted for, from the last quantity word before it."""
    best, where = None, -1
    for pattern, bounds, name in BOUNDED:
        for m in pattern.finditer(context):
            if m.start() > where:
                best, where = (bounds, name), m.start()
    for m in UNBOUNDED.finditer(context):
        if m.start() > where:
            return None
    return best


def check_block(b: Block) -> list[str]:
    where = f"{b.page}:{b.line}"
    problems: list[str] = []
    found = quotes(b.text)
    if b.nosrc is None:
        if found and not b.sources:
            problems.append(f"{where}: numbers with no committed source ({', '.join(q.text for q in found[:6])}…): name the "
                            f"results file in a <!-- src: … --> marker, or generate one")
        srcs = []
        for rel in b.sources:
            try:
                srcs.append(source(rel))
            except FileNotFoundError as e:
                problems.append(f"{where}: {e}")
        if srcs:
            missing = [q.text for q in found if not any(s.has(q) for s in srcs)]
            if missing:
                problems.append(f"{where}: not in {' '.join(b.sources)}: {', '.join(missing)}")
    else:
        srcs = []  # exempt: its numbers are not the sources' (a probe, a budget)
    for text in clauses(b.text):
        # 2. bounded intervals
        last = 0
        for m in INTERVAL.finditer(text):
            a, h = float(m.group(1).replace(MINUS, "-")), float(m.group(2))
            bound = _bounds_for(text[:m.start()][max(0, last - 0):])
            last = m.end()
            if bound:
                (lo, hi), name = bound
                if a - h < lo - 1e-9 or a + h > hi + 1e-9:
                    problems.append(f"{where}: {m.group(0)} is {name}, whose interval must stay in [{lo:g}, {hi:g}]: "
                                    f"'{text.strip()[:120]}'")
        # 3. inequalities against the sources' intervals
        for m in INEQUALITY.finditer(text):
            left, op, right = m.group(1), m.group(2), float(m.group(3).replace(MINUS, "-"))
            if "±" in text[max(0, m.start() - 12):m.start()]:
                continue
            for s in srcs:
                for v, h in s.intervals:
                    if h > 0 and _close(v, left):
                        lo, hi = v - h, v + h
                        ok = hi <= right if op in "≤<" else lo >= right
                        if not ok:
                            problems.append(f"{where}: '{m.group(0)}' is said of a mean whose 95% interval is "
                                            f"{v:.1f} ± {h:.1f} ({s.rel}): the interval straddles {right:g}")
                        break
        # 4. verdict words, per clause (a ";" or a parenthesis ends one)
        ivs = INTERVAL.findall(text)
        for part in re.split(r"[;()]", text):
            one = INTERVAL.findall(part)
            against_a_bound = re.search(r"straddl|against|bound", part)
            if len(one) == 1 and re.search(r"\bunresolved\b", part) and not against_a_bound \
                    and not re.search(r"\b(not|no longer)\b[^.]*unresolved", part):
                a, h = float(one[0][0].replace(MINUS, "-")), float(one[0][1])
                if abs(a) > h:
                    problems.append(f"{where}: '{one[0][0]} ± {one[0][1]}' excludes 0 but its clause calls it unresolved")
        # 5. seed counts
        counts = set().union(*(s.seed_counts for s in srcs)) if srcs else set()
        if counts:
            for m in SEEDS.finditer(text):
                word = next(g for g in m.groups() if g)
                n = int(word) if word.isdigit() else WORDS[word.lower()]
                if n not in counts:
                    problems.append(f"{where}: '{m.group(0)}' but the sources have {sorted(counts)} seeds")
        # 6. target names
        for m in SCALE.finditer(text):
            k = float(m.group(1))
            for s in srcs:
                if any(str(r.get("target_spec")) == f"n{k:g}" and _record_quotes(r, ivs) for r in s.records):
                    problems.append(f"{where}: '{m.group(0)}' quotes the target n{k:g}, which is normalized "
                                    f"(0: the data's worst return, 1: its best), not {k:g}× the best")
                    break
        # 7. vocabulary
        for pattern, why in TERMS:
            if pattern.search(text):
                problems.append(f"{where}: {why}: '{text.strip()[:120]}'")
    for m in PER_EPISODE.finditer(COMMENT.sub("", b.text)):
        target = m.group(1) or m.group(2)
        rel = _resolve(b.page, target)
        if rel and (REPO / rel).is_file() and not _has_episode_column(rel):
            problems.append(f"{where}: {target} is called per-episode but holds no episode column (aggregate rows)")
    # all-resolved
    quoted = quotes(b.text)
    for rel, key in b.all_resolved:
        s = source(rel)
        for r in s.records:
            v, h = r.get(key), r.get(f"{key}_ci95")
            if isinstance(v, float | int) and isinstance(h, float | int) and math.isfinite(v) and math.isfinite(h) and abs(v) > h:
                if not any(abs(q.value - abs(v)) <= 0.5 * 10 ** -q.decimals + 1e-9 and q.decimals >= 0 for q in quoted):
                    problems.append(f"{where}: claims every resolved {key} of {rel}, but {v:.1f} ± {h:.1f} is not quoted")
    return problems


def _record_quotes(r: dict, ivs) -> bool:
    vals = [v for v in r.values() if isinstance(v, float | int)]
    return any(any(_close(v, a) for v in vals) for a, _ in ivs)


def _resolve(page: str, target: str) -> str | None:
    import posixpath

    path = target.partition("#")[0]
    if page == "README.md":
        return posixpath.normpath(path)
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page), path))
    for candidate in (resolved, posixpath.normpath(posixpath.join("docs", resolved.removeprefix("docs/"))),
                      resolved.removeprefix("docs/")):
        for root in ("", "experiments/"):
            rel = candidate if not root else candidate.replace("docs/experiments/", "experiments/", 1)
            if (REPO / rel).is_file():
                return rel
    return None


def _has_episode_column(rel: str) -> bool:
    text = (REPO / rel).read_text(encoding="utf-8")
    head = text.splitlines()[0] if rel.endswith(".csv") else text[:4000]
    return bool(re.search(r"\b(episode|env_seed)\b", head.replace('"episodes"', "").replace(",episodes,", ",")))


def check(pages: dict[str, str] | None = None) -> tuple[list[str], list[Block]]:
    """Every problem on the checked pages, and the blocks exempted by a nosrc marker."""
    pages = checked_pages() if pages is None else pages
    problems, exempt = [], []
    for page, text in pages.items():
        for b in blocks(page, text):
            if b.nosrc is not None:
                exempt.append(b)
            problems += check_block(b)
    return problems, exempt


if __name__ == "__main__":
    found, exempt = check()
    print("\n".join(found))
    print(f"{len(found)} problems; {len(exempt)} blocks without a results file (nosrc)")
