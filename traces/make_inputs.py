"""Write the deterministic inputs of the shipped traces into a directory (default: the current one).

    text24k.txt   24 KiB of seeded pseudo-English (3000 words, Zipf-weighted): xz's input
    lines3k.txt   3000 lines "KEY WORD N" with random 48-bit hex keys: sort's input
    db.sql        the SQL script sqlite3 runs (inserts, an index build, a join)
    blobs.sql     the SQL script of the large sqlite3 trace (3000 rows with 6 KB blobs, an index
                  build, an update through the index, a scan)
    long16m.txt   8192 lines of 2048 characters (a random 48-bit hex key, a space, 2035 random letters a-p):
                  16 MiB, sort's input for the large trace

The SHA-256 of each is in PROVENANCE.md; `python3 make_inputs.py DIR && sha256sum DIR/*` checks them.
"""
import os
import random
import sys

SQL = """CREATE TABLE a(id INTEGER PRIMARY KEY, k INTEGER, v TEXT);
CREATE TABLE b(id INTEGER PRIMARY KEY, k INTEGER, w TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000)
  INSERT INTO a SELECT i, (i * 7919) % 10007, printf('%08x-%08x', (i * 2654435761) % 4294967296, i * 40503) FROM c;
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 500)
  INSERT INTO b SELECT i, (i * 31) % 10007, printf('row %d of b', i) FROM c;
CREATE INDEX a_k ON a(k);
SELECT count(*), sum(length(a.v) + length(b.w)) FROM a JOIN b ON a.k = b.k;
"""
BLOBS_SQL = """CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, b BLOB);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000)
  INSERT INTO t SELECT i, (i * 7919) % 10007, zeroblob(6000) FROM c;
CREATE INDEX t_k ON t(k);
UPDATE t SET b = zeroblob(5000) WHERE k < 1000;
SELECT count(*), sum(length(b)) FROM t;
"""
LETTERS = bytes(ord("a") + (i & 15) for i in range(256))


def main(out: str) -> None:
    r = random.Random(13)
    words = ["".join(r.choice("etaoinshrdlucmfwyp") for _ in range(r.randint(2, 9))) for _ in range(3000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    text, n = [], 0
    while n < 96 << 10:               # the same draws as when the traces were recorded
        line = " ".join(r.choices(words, weights, k=r.randint(6, 14))) + ".\n"
        text.append(line)
        n += len(line)
    lines = [f"{r.getrandbits(48):012x} {r.choice(words)} {i}\n" for i in range(3000)]
    with open(os.path.join(out, "text24k.txt"), "w") as f:
        f.write("".join(text)[:24576])
    with open(os.path.join(out, "lines3k.txt"), "w") as f:
        f.writelines(lines)
    with open(os.path.join(out, "db.sql"), "w") as f:
        f.write(SQL)
    with open(os.path.join(out, "blobs.sql"), "w") as f:
        f.write(BLOBS_SQL)
    big = random.Random(14)           # its own generator: the inputs above keep their draws
    with open(os.path.join(out, "long16m.txt"), "w") as f:
        for _ in range(8192):
            f.write(f"{big.getrandbits(48):012x} " + big.randbytes(2035).translate(LETTERS).decode() + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
