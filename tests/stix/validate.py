"""The atlas's STIX 2.1 export and TAXII 2.1 server against the OASIS tools, end to end.

Starts the real `qalqan atlas` binary on a temporary SQLite database, bootstraps three outlets
and their tokens with the CLI, files incidents with sightings of every indicator kind (values
with quotes and backslashes included) through the JSON API, then:

1. downloads each outlet's bundle from `GET /api/v1/stix/bundle` and validates it with the OASIS
   validator (`stix2validator`, offline, references enforced): no errors allowed, warnings
   counted and printed by code;
2. checks the TLP rules on what each outlet's bundle holds;
3. walks TAXII 2.1 with the OASIS client (`taxii2client.v21`): discovery → API root →
   collections → objects in pages of 7 (`as_pages`), with Basic auth; checks every object comes
   once, the set equals the bundle's (plus the constant marking definitions and outlet
   identities), `added_after` resumes, Bearer auth works, a wrong `Accept` is 406;
4. pushes an envelope through TAXII as a trusted outlet (status complete, indicator then
   visible) and is refused as an untrusted one;
5. imports one outlet's bundle into another through `POST /api/v1/stix/import`;
6. has a campaign proposed, confirmed, renamed and described, and validates the bundles that
   now carry it; walks TAXII with the OASIS client again and finds the same campaign objects
   (object by id, versions, manifest, `added_after` after the rename), under the same TLP.

Prints `stix: N passed, M failed` and exits non-zero on a failure.

Usage: validate.py PATH/TO/qalqan
"""

import base64
import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import stix2validator  # stix2-validator, installed by scripts/test.sh
from taxii2client.v21 import Server, as_pages  # taxii2-client, installed by scripts/test.sh
from taxii2client.exceptions import AccessError

PASSWORD = "stix test password, long enough"
TAXII_MEDIA = "application/taxii+json;version=2.1"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cli(qalqan, db, *args):
    env = dict(os.environ, QALQAN_PASSWORD=PASSWORD)
    r = subprocess.run([qalqan, "atlas", "--database", db, *args], check=True, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return r.stdout.strip()


def lower(headers):
    return {k.lower(): v for k, v in headers.items()}


class Api:
    def __init__(self, base, token):
        self.base = base
        self.token = token

    def call(self, method, path, body=None, headers=None, raw=False):
        data = None
        h = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                content = r.read()
                return r.status, lower(r.headers), content if raw else json.loads(content or b"null")
        except urllib.error.HTTPError as e:
            content = e.read()
            try:
                parsed = json.loads(content)
            except ValueError:
                parsed = content
            return e.code, lower(e.headers), parsed


def validate(bundle_text):
    """Runs the OASIS validator; returns (errors, warnings by code)."""
    opts = stix2validator.ValidationOptions(version="2.1", enforce_refs=True, silent=True)
    results = stix2validator.validate_string(bundle_text, opts)
    if not isinstance(results, list):
        results = [results]
    errors = []
    warnings = collections.Counter()
    for r in results:
        for e in r.errors:
            errors.append(str(e))
        for w in r.warnings:
            m = re.search(r"\{(\d+)\}", str(w))
            warnings[m.group(1) if m else str(w)[:60]] += 1
    return errors, warnings


def main():
    qalqan = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="qalqan-stix-")
    db = f"sqlite://{work}/atlas.db"
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok   {name}")
        else:
            failed += 1
            print(f"FAIL {name} {detail}")

    cli(qalqan, db, "task-force", "Медиа-группа")
    for slug, name in [("alpha", "Alpha Media"), ("bravo", "Bravo News"), ("charlie", "Charlie")]:
        cli(qalqan, db, "outlet", "add", slug, name)
    tokens = {
        o: cli(qalqan, db, "token", "create", "--outlet", o, "--name", f"{o}-stix", "--role", "editor")
        for o in ["alpha", "bravo", "charlie"]
    }
    cli(qalqan, db, "outlet", "trust", "bravo")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([qalqan, "atlas", "--listen", f"127.0.0.1:{port}", "--database", db],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/api/v1/openapi.json", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        a = {o: Api(base, t) for o, t in tokens.items()}

        # Alpha's incidents, one per TLP level; RED names bravo as recipient.
        ids = {}
        for tlp in ["clear", "green", "amber", "amber+strict", "red"]:
            body = {"kind": "http_flood", "title": f"Flood ({tlp}) on alpha.example",
                    "description": "Search page flooded; \"quoted\" and back\\slashed text.",
                    "tlp": tlp, "started_at": "2026-03-01T09:00:00Z",
                    "recipients": ["bravo"] if tlp == "red" else []}
            st, _, r = a["alpha"].call("POST", "/api/v1/incidents", body)
            check(f"incident {tlp} filed", st == 201, r)
            ids[tlp] = r["id"]
        every_kind = [
            {"kind": "ip", "value": "198.51.100.7", "count": 48213},
            {"kind": "ip", "value": "2001:db8::7", "count": 12},
            {"kind": "cidr", "value": "203.0.113.0/24", "count": 900},
            {"kind": "asn", "value": "AS9198", "count": 3},
            {"kind": "domain", "value": "bad.example", "count": 1},
            {"kind": "url", "value": "https://bad.example/it's/a\\path?q=1", "count": 2},
            {"kind": "email", "value": "troll@bad.example", "count": 1},
            {"kind": "social_account", "value": "telegram:@bot_o'neil", "count": 5},
            {"kind": "user_agent", "value": "Mozilla/5.0 (X'; \\evil)", "count": 7000},
            {"kind": "text_pattern", "value": "you will regret (this) [story]", "count": 40},
            {"kind": "file_sha256", "value": "a" * 64, "count": 1},
        ]
        st, _, r = a["alpha"].call("POST", f"/api/v1/incidents/{ids['green']}/indicators", every_kind)
        check("sightings of every indicator kind", st == 201, r)
        # Enough addresses that TAXII needs several pages.
        many = [{"kind": "ip", "value": f"192.0.2.{n}", "count": n + 1,
                 "first_seen": "2026-03-01T09:00:00Z", "last_seen": "2026-03-01T09:45:00Z"}
                for n in range(1, 31)]
        for tlp in ["clear", "amber", "amber+strict", "red"]:
            st, _, r = a["alpha"].call("POST", f"/api/v1/incidents/{ids[tlp]}/indicators",
                                       many[:10] + [{"kind": "domain", "value": f"{tlp.replace('+', '-')}.example"}])
            check(f"sightings in the {tlp} incident", st == 201, r)
        st, _, r = a["alpha"].call("POST", f"/api/v1/incidents/{ids['green']}/updates",
                                   {"body": "Origin back after 40 minutes.", "new_status": "verified"})
        check("timeline update", st == 201, r)
        st, _, r = a["bravo"].call("POST", "/api/v1/incidents", {
            "kind": "bot_followers", "title": "Bot followers on Telegram", "tlp": "green",
            "started_at": "2026-03-02"})
        check("bravo's incident", st == 201, r)
        st, _, r = a["bravo"].call("POST", f"/api/v1/incidents/{r['id']}/indicators", many)
        check("bravo's sightings", st == 201, r)

        # 1. Every outlet's bundle passes the OASIS validator.
        bundles = {}
        total_warnings = collections.Counter()
        for o in ["alpha", "bravo", "charlie"]:
            st, h, raw = a[o].call("GET", "/api/v1/stix/bundle", raw=True)
            check(f"{o}: bundle served", st == 200 and h.get("content-type", "").startswith(
                "application/stix+json"), (st, h.get("content-type")))
            text = raw.decode()
            b = json.loads(text)
            bundles[o] = b
            check(f"{o}: no spec_version on the bundle", "spec_version" not in b)
            errors, warnings = validate(text)
            total_warnings.update(warnings)
            check(f"{o}: bundle of {len(b.get('objects', []))} objects valid (stix2validator)",
                  not errors, "\n".join(errors[:20]))
            print(f"     {o}: {sum(warnings.values())} warnings {dict(warnings)}")
        print(f"stix2validator warnings over all bundles: {sum(total_warnings.values())} "
              f"{dict(total_warnings)}")

        # The SCO test vector of the registry research.
        alpha_ids = {x["id"] for x in bundles["alpha"]["objects"]}
        check("UUIDv5 of 198.51.100.7", "ipv4-addr--12592121-be4c-5a93-a813-5a5af16e50db" in alpha_ids)

        # 2. TLP in the export: which of alpha's incidents each outlet gets.
        def incidents_of(b):
            return {x["id"].split("--")[1] for x in b.get("objects", []) if x["type"] == "incident"}
        want = {
            "alpha": set(ids.values()),
            "bravo": {ids["clear"], ids["green"], ids["red"]},
            "charlie": {ids["clear"], ids["green"]},
        }
        for o, w in want.items():
            got = incidents_of(bundles[o]) & set(ids.values())
            check(f"{o}: sees exactly alpha's incidents TLP allows", got == w, (sorted(got), sorted(w)))
        strict_domain = [x for x in bundles["bravo"]["objects"]
                         if x.get("value") == "amber-strict.example"]
        check("bravo: no observable only seen under AMBER+STRICT", not strict_domain)

        # 3. TAXII with the OASIS client, Basic auth, pages of 7.
        server_t = Server(base + "/taxii2/", user="alpha", password=tokens["alpha"])
        check("discovery", server_t.title.endswith("TAXII 2.1") and len(server_t.api_roots) == 1)
        root = server_t.api_roots[0]
        check("api root", TAXII_MEDIA in root.versions and root.max_content_length > 0)
        cols = root.collections
        check("collections", len(cols) == 1 and cols[0].can_read, [c.title for c in cols])
        col = cols[0]
        seen = []
        pages = 0
        last_added = None
        for env in as_pages(col.get_objects, per_request=7):
            pages += 1
            seen.extend(env.get("objects", []))
        taxii_ids = [x["id"] for x in seen]
        dup = [i for i, n in collections.Counter(taxii_ids).items() if n > 1]
        check(f"TAXII objects in {pages} pages of 7, each once", pages > 3 and not dup, dup[:5])
        constant = {x["id"] for x in seen if x["type"] in ("marking-definition", "identity")}
        check("TAXII objects = bundle objects (+ markings and outlet identities)",
              set(taxii_ids) - constant == alpha_ids - constant and alpha_ids <= set(taxii_ids),
              (sorted(set(taxii_ids) ^ alpha_ids)[:10]))
        errors, warnings = validate(json.dumps({"type": "bundle", "id": "bundle--0b5d4d44-5a43-4a8e-9f3c-7d1e0e5d3a21",
                                                "objects": seen}))
        check("TAXII objects valid (stix2validator)", not errors, "\n".join(errors[:10]))

        # Manifest, paged the same way, lists the same ids.
        mids = []
        for env in as_pages(col.get_manifest, per_request=13):
            mids.extend(m["id"] for m in env.get("objects", []))
        check("manifest lists the same objects", sorted(mids) == sorted(taxii_ids))

        # Polling: after a full walk, `added_after` = the last X-TAXII-Date-Added-Last returns
        # exactly what was added since (a new sighting: its indicator, observed-data, sighting,
        # relationship and observable).
        st, h, _ = Api(base, tokens["alpha"]).call(
            "GET", f"/taxii2/api/collections/{col.id}/objects/?limit=1000",
            headers={"Accept": TAXII_MEDIA})
        last_added = h.get("x-taxii-date-added-last")
        check("X-TAXII-Date-Added-First/Last headers",
              st == 200 and last_added and h.get("x-taxii-date-added-first"), h)
        time.sleep(0.01)
        st, _, r = a["alpha"].call("POST", f"/api/v1/incidents/{ids['green']}/indicators",
                                   [{"kind": "ip", "value": "198.51.100.250"}])
        newer = []
        for env in as_pages(col.get_objects, per_request=2, added_after=last_added):
            newer.extend(x["type"] for x in env.get("objects", []))
        check("added_after returns exactly the new objects",
              sorted(newer) == ["indicator", "ipv4-addr", "observed-data", "relationship", "sighting"],
              newer)

        # Object by id and its versions.
        one = col.get_object(f"incident--{ids['green']}")
        check("object by id", [x["id"] for x in one["objects"]] == [f"incident--{ids['green']}"])
        v = col.object_versions(f"incident--{ids['green']}")
        check("object versions", v["versions"] == [one["objects"][0]["modified"]], v)

        # Bearer works too; a wrong Accept is 406; no credentials is 401.
        st, h, r = Api(base, tokens["charlie"]).call("GET", "/taxii2/", headers={"Accept": TAXII_MEDIA})
        check("Bearer auth", st == 200 and h.get("content-type") == TAXII_MEDIA, (st, h.get("content-type")))
        st, h, r = Api(base, tokens["charlie"]).call("GET", "/taxii2/", headers={"Accept": "application/json"})
        check("wrong Accept is 406", st == 406 and h.get("content-type") == TAXII_MEDIA, st)
        st, _, _ = Api(base, "qat_wrong").call("GET", "/taxii2/", headers={"Accept": TAXII_MEDIA})
        check("bad token is 401", st == 401, st)

        # TLP in TAXII: charlie's collection has none of alpha's AMBER, AMBER+STRICT or RED.
        charlie_col = Server(base + "/taxii2/", user="charlie", password=tokens["charlie"]).api_roots[0].collections[0]
        cseen = []
        for env in as_pages(charlie_col.get_objects, per_request=25):
            cseen.extend(env.get("objects", []))
        got = {x["id"].split("--")[1] for x in cseen if x["type"] == "incident"} & set(ids.values())
        check("charlie's TAXII collection follows TLP", got == want["charlie"], sorted(got))

        # 4. Writing through TAXII: bravo is trusted, alpha is not.
        envelope = {"objects": [
            {"type": "indicator", "spec_version": "2.1",
             "id": "indicator--6e1c6c1a-54d2-4c8f-9a3e-4b0a4c3f2d11",
             "created": "2026-03-05T10:00:00.000Z", "modified": "2026-03-05T10:00:00.000Z",
             "name": "Partner flood source", "pattern": "[ipv4-addr:value = '203.0.113.99']",
             "pattern_type": "stix", "valid_from": "2026-03-05T10:00:00Z",
             "object_marking_refs": ["marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"]},
            {"type": "sighting", "spec_version": "2.1",
             "id": "sighting--0c7b5b6e-0d3f-4d45-8a4c-2b3c4d5e6f70",
             "created": "2026-03-05T10:00:00.000Z", "modified": "2026-03-05T10:00:00.000Z",
             "sighting_of_ref": "indicator--6e1c6c1a-54d2-4c8f-9a3e-4b0a4c3f2d11", "count": 77,
             "first_seen": "2026-03-05T09:00:00Z", "last_seen": "2026-03-05T09:30:00Z"},
        ]}
        bravo_col = Server(base + "/taxii2/", user="bravo", password=tokens["bravo"]).api_roots[0].collections[0]
        check("bravo's collection can_write", bravo_col.can_write)
        status = bravo_col.add_objects(envelope)
        check("TAXII POST → status complete", status.status == "complete" and status.success_count == 2
              and status.total_count == 2, vars(status))
        status.refresh()
        check("status resource readable", status.status == "complete")
        found = col.get_objects(**{"type": "indicator"})
        pats = [x["pattern"] for x in found.get("objects", [])]
        check("pushed indicator visible to alpha (GREEN)", "[ipv4-addr:value = '203.0.113.99']" in pats)
        try:
            col.add_objects(envelope)
            check("untrusted outlet cannot POST", False)
        except AccessError:
            check("untrusted outlet cannot POST", True)
        st, _, _ = Api(base, tokens["alpha"]).call(
            "POST", f"/taxii2/api/collections/{col.id}/objects/", json.dumps(envelope).encode(),
            headers={"Accept": TAXII_MEDIA, "Content-Type": TAXII_MEDIA})
        check("untrusted outlet's POST is 403", st == 403, st)

        # 5. STIX import through the API: alpha's GREEN incident into charlie.
        st, _, green = a["alpha"].call("GET", f"/api/v1/stix/bundle?incident={ids['green']}", raw=True)
        st, _, r = a["charlie"].call("POST", "/api/v1/stix/import", green)
        check("import of a bundle", st == 201 and r["sightings"] >= 9 and r["tlp"] == "green", r)
        st, _, r2 = a["charlie"].call("POST", "/api/v1/stix/import", green)
        check("re-import changes nothing", st == 200 and r2["incident"] == r["incident"], r2)
        st, _, r = a["charlie"].call("POST", "/api/v1/stix/import", {"type": "bundle",
                                     "id": "bundle--0b5d4d44-5a43-4a8e-9f3c-7d1e0e5d3a21",
                                     "objects": [{"type": "indicator", "id": "indicator--x"}]})
        check("invalid bundle is 422 naming the object", st == 422 and any(
            f["field"].startswith("objects[0]") for f in r.get("fields", [])), r)

        # 6. Campaigns: alpha's incidents and bravo's share 192.0.2.1-10 (and their /24) within a
        # day; once alpha confirms the proposal, bundles carry the campaign, `related-to` from
        # each member the reader may see and `indicates` from the shared indicators; charlie's
        # bundle names none of alpha's AMBER, AMBER+STRICT or RED incidents.
        st, _, r = a["alpha"].call("POST", "/api/v1/campaigns/recompute")
        check("campaigns recomputed", st == 200 and r.get("groups", 0) >= 1, r)
        st, _, r = a["alpha"].call("GET", "/api/v1/campaigns?status=proposed")
        camp = next((c for c in r.get("items", []) if ids["clear"] in [m["id"] for m in c["members"]]), None)
        check("a campaign of alpha's and bravo's incidents is proposed", camp is not None, r)
        if camp:
            st, _, r = a["alpha"].call("POST", f"/api/v1/campaigns/{camp['id']}/decision", {"status": "confirmed"})
            check("alpha confirms it", st == 200 and r.get("status") == "confirmed", r)
            for o in ["alpha", "charlie"]:
                st, _, raw = a[o].call("GET", "/api/v1/stix/bundle", raw=True)
                text = raw.decode()
                objs = json.loads(text).get("objects", [])
                errors, warnings = validate(text)
                check(f"{o}: bundle with the campaign valid (stix2validator)", not errors, "\n".join(errors[:20]))
                cid = f"campaign--{camp['id']}"
                check(f"{o}: campaign exported", any(x["id"] == cid and x["type"] == "campaign" for x in objs))
                rels = [x for x in objs if x["type"] == "relationship" and x.get("target_ref") == cid]
                members = {x["source_ref"].split("--")[1] for x in rels if x["relationship_type"] == "related-to"}
                check(f"{o}: members related to the campaign follow TLP",
                      ids["clear"] in members and (members & set(ids.values())) <= want[o],
                      sorted(members))
                check(f"{o}: shared indicators indicate the campaign",
                      any(x["relationship_type"] == "indicates" for x in rels))

            # Renamed and described by an editor: the export and TAXII carry the new name and
            # description, with a later `modified`.
            st, h, _ = Api(base, tokens["alpha"]).call(
                "GET", f"/taxii2/api/collections/{col.id}/objects/?limit=1000",
                headers={"Accept": TAXII_MEDIA})
            before_rename = h.get("x-taxii-date-added-last")
            time.sleep(0.01)
            new_name = "Ботнет «Весна» (192.0.2.0/24)"
            desc = "Одни и те же адреса у двух редакций.\nRenamed by the OASIS test."
            st, _, r = a["alpha"].call("PATCH", f"/api/v1/campaigns/{camp['id']}",
                                       {"name": new_name, "description": desc})
            check("alpha renames and describes the campaign",
                  st == 200 and r.get("name") == new_name and r.get("description") == desc, r)
            st, _, r = a["alpha"].call("PATCH", f"/api/v1/campaigns/{camp['id']}", {"name": " "})
            check("an empty name is 422", st == 422, r)
            cid = f"campaign--{camp['id']}"
            for o, o_col in [("alpha", col), ("charlie", charlie_col)]:
                st, _, raw = a[o].call("GET", "/api/v1/stix/bundle", raw=True)
                bundle_objs = json.loads(raw.decode()).get("objects", [])
                camp_objs = [x for x in bundle_objs if x["id"] == cid]
                check(f"{o}: exported campaign has the new name and description",
                      len(camp_objs) == 1 and camp_objs[0]["name"] == new_name
                      and camp_objs[0]["description"] == desc, camp_objs)
                tseen = []
                tpages = 0
                for env in as_pages(o_col.get_objects, per_request=7):
                    tpages += 1
                    tseen.extend(env.get("objects", []))
                tids = [x["id"] for x in tseen]
                # Every object once, the URL observables included: alpha's bundle imported into
                # charlie (step 5) must land on the same indicator rows, not on second ones.
                tdup = [i for i, n in collections.Counter(x["id"] for x in tseen).items() if n > 1]
                check(f"{o}: every TAXII object once ({tpages} pages)", not tdup, tdup[:5])
                t_camp = [x for x in tseen if x["id"] == cid]
                check(f"{o}: TAXII serves the campaign as exported", t_camp == camp_objs, t_camp)
                related = lambda objs: sorted(x["id"] for x in objs if x.get("target_ref") == cid)
                check(f"{o}: TAXII serves the campaign's relationships as exported",
                      related(tseen) == related(bundle_objs) and related(tseen),
                      (len(related(tseen)), len(related(bundle_objs))))
                members = {x["source_ref"].split("--")[1] for x in tseen
                           if x.get("target_ref") == cid and x["relationship_type"] == "related-to"}
                check(f"{o}: TAXII members follow TLP", (members & set(ids.values())) <= want[o],
                      sorted(members))
                constant = {x["id"] for x in tseen if x["type"] in ("marking-definition", "identity")}
                bids = {x["id"] for x in bundle_objs}
                check(f"{o}: TAXII objects = bundle objects with the campaign",
                      set(tids) - constant == bids - constant, sorted(set(tids) ^ bids)[:10])
                errors, _ = validate(json.dumps({"type": "bundle",
                                                 "id": "bundle--0b5d4d44-5a43-4a8e-9f3c-7d1e0e5d3a22",
                                                 "objects": tseen}))
                check(f"{o}: TAXII objects with the campaign valid (stix2validator)", not errors,
                      "\n".join(errors[:10]))
                one = o_col.get_object(cid)
                check(f"{o}: campaign by id", [x["id"] for x in one["objects"]] == [cid], one)
                v = o_col.object_versions(cid)
                check(f"{o}: campaign versions", v["versions"] == [one["objects"][0]["modified"]], v)
                m = o_col.get_manifest(**{"type": "campaign"})
                check(f"{o}: campaign in the manifest",
                      [x["id"] for x in m.get("objects", [])] == [cid], m)
            newer = []
            for env in as_pages(col.get_objects, per_request=3, added_after=before_rename):
                newer.extend(env.get("objects", []))
            check("added_after finds the renamed campaign and its relationships",
                  any(x["id"] == cid and x["name"] == new_name for x in newer)
                  and all(x["id"] == cid or x.get("target_ref") == cid for x in newer),
                  [x["id"] for x in newer][:10])
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)

    print(f"stix: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
