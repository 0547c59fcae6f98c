"""
A write race over HTTP, and its verdict: many clients PATCH (merge, JSON
Patch, with and without If-Match), PUT and DELETE a few hot records for a
while, against one or several servers; then every acknowledged write is
replayed in commit order (the records' C{last_modified}, unique and
commit-ordered per list) and checked against what each response showed and
what is stored at the end.

Used by C{tests/test_write_races.py}, and by hand against running servers::

    python -m tests.race http://127.0.0.1:8888/v1 [http://127.0.0.1:8889/v1 ...] --seconds 10

Counts, all of which must be zero: double successes (two If-Match writes
acknowledged over the same version), lost fields (an acknowledged PATCH
field missing although no later acknowledged PUT or DELETE replaced it),
wrong answers (a response showing a state the replay does not give),
resurrections (a PATCH acknowledged on a deleted record), server errors.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import time
from dataclasses import dataclass, field

import treq
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.web.client import HTTPConnectionPool

AUTH = b"Basic " + base64.b64encode(b"racer:pw")
COLLECTION = "/buckets/race/collections/hot"
DELETED = object()


@dataclass
class Ack:
    """One acknowledged write: what was asked and what the server answered."""

    last_modified: int
    kind: str  # "put", "patch", "delete"
    field: str | None = None
    value: object = None
    if_match: int | None = None
    shown: dict | None = None  # the record as the response showed it


@dataclass
class Verdict:
    writes: int = 0
    acknowledged: int = 0
    conflicts_412: int = 0
    server_errors: int = 0
    double_successes: int = 0
    lost_fields: int = 0
    wrong_answers: int = 0
    resurrections: int = 0
    other_answers: int = 0  # anything but 200/201/404/412: a 409 means every retry lost
    problems: list = field(default_factory=list)

    def clean(self) -> bool:
        return not (
            self.server_errors or self.double_successes or self.lost_fields
            or self.wrong_answers or self.resurrections or self.other_answers
        )

    def line(self) -> str:
        return (
            f"writes={self.writes} acknowledged={self.acknowledged} 412={self.conflicts_412}"
            f" 5xx={self.server_errors} double_successes={self.double_successes}"
            f" lost_fields={self.lost_fields} wrong_answers={self.wrong_answers}"
            f" resurrections={self.resurrections} other={self.other_answers}"
        )


def _plain(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("id", "last_modified")}


class Race:
    def __init__(self, reactor, bases: list[str], records: int = 3, clients: int = 12, seed: int | None = None):
        self.reactor = reactor
        self.bases = bases
        self.ids = [f"hot{n}" for n in range(records)]
        self.clients = clients
        self.random = random.Random(seed)
        self.acks: dict[str, list[Ack]] = {i: [] for i in self.ids}
        self.verdict = Verdict()
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = clients * 2

    async def call(self, method, url, body=None, headers=None):
        sent = {b"Authorization": [AUTH], b"Content-Type": [b"application/json"]}
        for k, v in (headers or {}).items():
            sent[k.encode()] = [v.encode()]
        data = json.dumps(body).encode() if body is not None else None
        r = await treq.request(method, url, headers=sent, data=data, pool=self.pool, timeout=60)
        content = await r.content()
        return r.code, (json.loads(content) if content else None)

    async def prepare(self):
        base = self.bases[0]
        await self.call("PUT", base + "/buckets/race", {"data": {}})
        await self.call("PUT", base + COLLECTION, {"data": {}})
        for oid in self.ids:
            code, body = await self.call("PUT", f"{base}{COLLECTION}/records/{oid}", {"data": {"put": "start"}})
            assert code in (200, 201), (code, body)
            self.acks[oid].append(Ack(body["data"]["last_modified"], "put", value="start", shown=body["data"]))

    async def client(self, number: int, until: float):
        rnd = random.Random(self.random.random())
        seen: dict[str, int] = {}
        n = 0
        while time.monotonic() < until:
            n += 1
            oid = rnd.choice(self.ids)
            base = rnd.choice(self.bases)
            url = f"{base}{COLLECTION}/records/{oid}"
            name, value = f"c{number}_{n}", n
            roll = rnd.random()
            conditional = oid in seen and rnd.random() < 0.3
            headers = {"If-Match": f'"{seen[oid]}"'} if conditional else {}
            if roll < 0.50:
                kind = "patch"
                if rnd.random() < 0.2:
                    headers["Content-Type"] = "application/json-patch+json"
                    body = [{"op": "add", "path": f"/data/{name}", "value": value}]
                else:
                    body = {"data": {name: value}}
                method = "PATCH"
            elif roll < 0.75:
                kind, method, body = "put", "PUT", {"data": {"put": name}}
            else:
                kind, method, body = "delete", "DELETE", None
            self.verdict.writes += 1
            code, answer = await self.call(method, url, body, headers)
            if code >= 500:
                self.verdict.server_errors += 1
                self.verdict.problems.append(f"{method} {oid}: {code} {answer}")
                continue
            if code == 412:
                self.verdict.conflicts_412 += 1
                existing = (answer or {}).get("details", {}).get("existing")
                if existing:
                    seen[oid] = existing["last_modified"]
                else:
                    seen.pop(oid, None)
                continue
            if code == 404:
                seen.pop(oid, None)
                continue
            if code not in (200, 201):
                self.verdict.other_answers += 1
                self.verdict.problems.append(f"{method} {oid}: unexpected {code} {answer}")
                continue
            data = answer["data"]
            self.verdict.acknowledged += 1
            ack = Ack(
                data["last_modified"], kind,
                field=name if kind == "patch" else None,
                value=value if kind == "patch" else name if kind == "put" else None,
                if_match=seen.get(oid) if conditional else None,
                shown=None if kind == "delete" else data,
            )
            self.acks[oid].append(ack)
            if kind == "delete":
                seen.pop(oid, None)
            else:
                seen[oid] = data["last_modified"]

    async def judge(self):
        v = self.verdict
        for oid, acks in self.acks.items():
            acks.sort(key=lambda a: a.last_modified)
            stamps = [a.last_modified for a in acks]
            if len(set(stamps)) != len(stamps):
                v.double_successes += len(stamps) - len(set(stamps))
                v.problems.append(f"{oid}: two writes acknowledged with one timestamp")
            state: object = DELETED
            previous = None
            patched: dict[str, int] = {}
            used_if_match: set[int] = set()
            for ack in acks:
                if ack.if_match is not None:
                    if ack.if_match in used_if_match or ack.if_match != previous:
                        v.double_successes += 1
                        v.problems.append(f"{oid}: If-Match {ack.if_match} acknowledged over {previous}")
                    used_if_match.add(ack.if_match)
                if ack.kind == "put":
                    state = {"put": ack.value}
                    patched = {}
                elif ack.kind == "patch":
                    if state is DELETED:
                        v.resurrections += 1
                        v.problems.append(f"{oid}: PATCH acknowledged at {ack.last_modified} on a deleted record")
                        state = {}
                    state = {**state, ack.field: ack.value}
                    patched[ack.field] = ack.value
                else:
                    if state is DELETED:
                        v.problems.append(f"{oid}: DELETE acknowledged on a deleted record")
                        v.wrong_answers += 1
                    state = DELETED
                    patched = {}
                if ack.shown is not None and _plain(ack.shown) != state:
                    v.wrong_answers += 1
                    v.problems.append(f"{oid}: {ack.kind} at {ack.last_modified} showed {_plain(ack.shown)}, replay {state}")
                previous = ack.last_modified
            code, body = await self.call("GET", f"{self.bases[0]}{COLLECTION}/records/{oid}")
            if state is DELETED:
                if code != 404:
                    v.resurrections += 1
                    v.problems.append(f"{oid}: deleted last, but GET answers {code}")
                continue
            if code != 200:
                v.lost_fields += len(patched)
                v.problems.append(f"{oid}: expected the record, GET answers {code}")
                continue
            stored = _plain(body["data"])
            for name, value in patched.items():
                if stored.get(name) != value:
                    v.lost_fields += 1
                    v.problems.append(f"{oid}: acknowledged field {name} lost")
            if stored != state:
                v.wrong_answers += 1
                v.problems.append(f"{oid}: stored {stored}, replay {state}")

    async def run(self, seconds: float) -> Verdict:
        try:
            await self.prepare()
            until = time.monotonic() + seconds
            await DeferredList(
                [ensureDeferred(self.client(n, until)) for n in range(self.clients)], fireOnOneErrback=True
            )
            await self.judge()
        finally:
            await self.pool.closeCachedConnections()
        return self.verdict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bases", nargs="+", help="API roots, e.g. http://127.0.0.1:8888/v1")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--records", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    from twisted.internet import task

    async def run(reactor):
        failed = False
        for r in range(args.rounds):
            race = Race(reactor, args.bases, args.records, args.clients)
            verdict = await race.run(args.seconds)
            print(f"round {r + 1}: {verdict.line()}")
            for problem in verdict.problems[:20]:
                print("  ", problem)
            failed = failed or not verdict.clean()
        raise SystemExit(1 if failed else 0)

    task.react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
