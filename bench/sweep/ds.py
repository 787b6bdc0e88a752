"""datasketch MinHashLSH on the benchmark's documents (bench/sweep/run.sh).

Same shingles as qalqan (3-character substrings of the same normalised texts; the whole text
when shorter), same number of permutations, same banding (b, r) as qalqan derives for the
threshold. Documents are the distinct normalised texts (qalqan processes every message, so
this side does less work). Writes, for each sampled query, the candidates LSH returns.

usage: ds.py DOCS.tsv TRUTH.tsv NUM_PERM BANDS ROWS OUT.tsv
"""
import sys
import time

from datasketch import MinHash, MinHashLSH

docs_path, truth_path, num_perm, bands, rows, out_path = sys.argv[1:7]
num_perm, bands, rows = int(num_perm), int(bands), int(rows)
start = time.perf_counter()
texts = []
with open(docs_path, encoding="utf-8") as f:
    for line in f:
        texts.append(line.rstrip("\n").split("\t", 1)[1])
queries = []
with open(truth_path, encoding="utf-8") as f:
    for line in f:
        queries.append(int(line.split("\t", 1)[0]))
wanted = set(queries)


def shingles(t):
    if len(t) < 3:
        return [t.encode("utf-8")]
    return list({t[i : i + 3].encode("utf-8") for i in range(len(t) - 2)})


lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
kept = {}
CHUNK = 50_000
for s in range(0, len(texts), CHUNK):
    batch = [shingles(t) for t in texts[s : s + CHUNK]]
    hashes = MinHash.bulk(batch, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(hashes):
            session.insert(s + i, m)
            if s + i in wanted:
                kept[s + i] = m
built = time.perf_counter()
with open(out_path, "w", encoding="utf-8") as out:
    for q in queries:
        cand = lsh.query(kept[q])
        out.write(f"{q}\t{','.join(str(c) for c in sorted(cand))}\n")
done = time.perf_counter()
print(f"datasketch: {len(texts)} documents, build {built - start:.2f} s, {len(queries)} queries {done - built:.2f} s")
