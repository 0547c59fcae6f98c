"""
Protocol conformance, section 3: querying plural endpoints (filters, value
typing, nested fields, sorting, field selection, pagination, timestamps,
tombstones, counts).
"""

import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from twisted.trial.unittest import TestCase

from jsonsync.testclient import ClientTestCase, StubClient, build_app

B = "/v1/buckets/b"
C = B + "/collections/c"
RECS = C + "/records"

DATASET = [
    {"id": "r1", "n": 1, "s": "Alpha", "tags": ["a", "b"], "nested": {"x": "foo", "y": 1}, "flag": True, "typ": 1},
    {"id": "r2", "n": 2, "s": "beta", "tags": ["b", "c"], "nested": {"x": "bar"}, "flag": False, "typ": "1"},
    {"id": "r3", "n": 10, "s": "Gamma ray", "tags": [], "nested": {"x": "foo"}, "nul": None, "typ": [1, 2]},
    {"id": "r4", "n": 3, "s": "alphabet", "tags": [1, "a"], "typ": {"k": 1}},
    {"id": "r5"},
]


def uid(user, password="secret", secret=""):
    digest = hmac.new(secret.encode(), f"{user}:{password}".encode(), hashlib.sha256).hexdigest()
    return "basicauth:" + digest


def qs(*pairs, **params):
    items = list(pairs) + list(params.items())
    return "?" + urlencode(items, quote_via=quote, safe="")


class QueryCase(ClientTestCase):
    async def setUp(self):
        await super().setUp()
        self.assertEqual((await self.alice.put(B)).status, 201)
        self.assertEqual((await self.alice.put(C)).status, 201)
        self.ts = {}
        for obj in DATASET:
            r = await self.alice.post(RECS, {"data": obj})
            self.assertEqual(r.status, 201, r)
            self.ts[obj["id"]] = r.data["last_modified"]

    async def ids(self, query, path=RECS, client=None):
        r = await (client or self.alice).get(path + query)
        self.assertEqual(r.status, 200, (query, r))
        return [o["id"] for o in r.data]

    async def assertMatches(self, query, expected):
        got = await self.ids(query)
        self.assertEqual(sorted(got), sorted(expected), query)

    def assertInvalidQuery(self, r, name=None, contains=None):
        self.assertEqual(r.status, 400, r)
        body = r.json
        self.assertEqual(body["code"], 400)
        self.assertEqual(body["errno"], 107)
        self.assertEqual(body["error"], "Invalid parameters")
        details = body["details"]
        self.assertTrue(
            [d for d in details if d["location"] == "querystring" and (name is None or d["name"] == name)], body
        )
        if contains:
            self.assertIn(contains, body["message"])
        return body


# ---------------------------------------------------------------------------------
# §3.2 filters
# ---------------------------------------------------------------------------------
class FilterTests(QueryCase):
    async def test_equality(self):
        await self.assertMatches("?n=2", ["r2"])
        await self.assertMatches("?eq_n=2", ["r2"])
        await self.assertMatches("?s=beta", ["r2"])
        await self.assertMatches("?n=99", [])

    async def test_value_typing(self):
        await self.assertMatches(qs(typ="1"), ["r1"])
        await self.assertMatches(qs(typ='"1"'), ["r2"])
        await self.assertMatches(qs(typ="[1,2]"), ["r3"])
        await self.assertMatches(qs(typ='{"k":1}'), ["r4"])
        await self.assertMatches(qs(flag="true"), ["r1"])
        await self.assertMatches(qs(flag="false"), ["r2"])
        await self.assertMatches(qs(nul="null"), ["r3"])
        await self.assertMatches(qs(eq_typ='"1"'), ["r2"])

    async def test_raw_string_value(self):
        await self.assertMatches(qs(s="Gamma ray"), ["r3"])

    async def test_not(self):
        await self.assertMatches("?not_n=2", ["r1", "r3", "r4", "r5"])
        await self.assertMatches(qs(not_typ='"1"'), ["r1", "r3", "r4", "r5"])

    async def test_in(self):
        await self.assertMatches("?in_n=1,3", ["r1", "r4"])
        await self.assertMatches(qs(in_typ='1,"1"'), ["r1", "r2"])
        await self.assertMatches("?in_s=beta,Alpha", ["r1", "r2"])
        await self.assertMatches("?in_id=r1,r3", ["r1", "r3"])

    async def test_in_single_value_with_trailing_comma(self):
        # kinto-http.py sends a single value with a trailing comma.
        await self.assertMatches("?in_id=r2,", ["r2"])

    async def test_exclude(self):
        await self.assertMatches("?exclude_n=1,3", ["r2", "r3", "r5"])
        await self.assertMatches("?exclude_id=r1,r2", ["r3", "r4", "r5"])

    async def test_lt_max(self):
        await self.assertMatches("?lt_n=3", ["r1", "r2"])
        await self.assertMatches("?max_n=3", ["r1", "r2", "r4"])

    async def test_gt_min_match_missing(self):
        await self.assertMatches("?gt_n=3", ["r3", "r5"])
        await self.assertMatches("?min_n=3", ["r3", "r4", "r5"])

    async def test_like(self):
        await self.assertMatches("?like_s=alpha", ["r1", "r4"])
        await self.assertMatches("?like_s=LPH", ["r1", "r4"])
        await self.assertMatches("?like_s=alpha*", ["r1", "r4"])
        await self.assertMatches("?like_s=*ta", ["r2"])
        await self.assertMatches("?like_s=G*y", ["r3"])
        await self.assertMatches("?like_s=*a*e*", ["r4"])
        await self.assertMatches("?like_s=*e*a", ["r2"])
        await self.assertMatches("?like_s=zzz", [])

    async def test_like_empty_matches_all_with_field(self):
        got = await self.ids("?like_s=")
        self.assertTrue({"r1", "r2", "r3", "r4"} <= set(got), got)

    async def test_like_requires_string_value(self):
        r = await self.alice.get(RECS + "?like_s=1")
        self.assertInvalidQuery(r, "like_s")

    async def test_like_on_non_string_values_does_not_crash(self):
        # Kinto's memory backend crashes (500): a client expects a normal answer.
        r = await self.alice.get(RECS + "?like_typ=1*")
        self.assertEqual(r.status, 200, r)
        self.assertIn("r2", [o["id"] for o in r.data])
        self.assertNotIn("r3", [o["id"] for o in r.data])

    async def test_has(self):
        await self.assertMatches("?has_nul=true", ["r3"])
        await self.assertMatches("?has_nul=false", ["r1", "r2", "r4", "r5"])
        await self.assertMatches("?has_flag=1", ["r1", "r2"])
        await self.assertMatches("?has_flag=0", ["r3", "r4", "r5"])

    async def test_has_is_anded_with_other_filters(self):
        # Kinto quirk 10: has_ overwrote preceding filters; filters are ANDed.
        await self.assertMatches("?n=2&has_flag=true", ["r2"])
        await self.assertMatches("?has_flag=true&n=2", ["r2"])
        await self.assertMatches("?lt_n=3&has_nul=false", ["r1", "r2"])

    async def test_contains(self):
        await self.assertMatches("?contains_tags=b", ["r1", "r2"])
        await self.assertMatches(qs(contains_tags='["a","b"]'), ["r1"])
        await self.assertMatches(qs(contains_tags='"a"'), ["r1", "r4"])
        await self.assertMatches("?contains_tags=1", ["r4"])
        await self.assertMatches(qs(contains_tags='["x"]'), [])
        # non-array field: no match
        await self.assertMatches("?contains_s=beta", [])

    async def test_contains_any(self):
        await self.assertMatches(qs(contains_any_tags='["c",1]'), ["r2", "r4"])
        await self.assertMatches("?contains_any_tags=a", ["r1", "r4"])
        await self.assertMatches(qs(contains_any_tags='["zz"]'), [])

    async def test_contains_on_id_or_last_modified_400(self):
        for name in ("contains_id", "contains_any_id", "contains_last_modified"):
            r = await self.alice.get(RECS + f"?{name}=1")
            self.assertInvalidQuery(r, name, "is not an array")

    async def test_filters_are_anded(self):
        await self.assertMatches("?contains_tags=a&lt_n=3", ["r1"])
        await self.assertMatches("?like_s=a&not_id=r1&gt_n=2", ["r3", "r4"])

    async def test_nested_fields(self):
        await self.assertMatches("?nested.x=foo", ["r1", "r3"])
        await self.assertMatches("?not_nested.x=foo", ["r2", "r4", "r5"])
        await self.assertMatches("?has_nested.y=true", ["r1"])
        await self.assertMatches("?in_nested.x=bar,baz", ["r2"])

    async def test_dotted_keys(self):
        await self.alice.put(RECS + "/dot", {"data": {"a.b": {"c": 7}, "m": {"k.j": 3}}})
        await self.assertMatches("?a.b.c=7", ["dot"])
        await self.assertMatches("?m.k.j=3", ["dot"])

    async def test_id_integers_compared_as_strings(self):
        await self.alice.put(RECS + "/123", {"data": {}})
        await self.assertMatches("?id=123", ["123"])

    async def test_in_id_with_integer_looking_ids(self):
        # The spec says in_id values "must all be strings" yet ids like "123"
        # are valid: kinto-http.py joins ids with commas, so a client expects
        # numeric-looking ids to match (integers compared as strings).
        await self.alice.put(RECS + "/123", {"data": {}})
        await self.assertMatches("?in_id=123,r1", ["123", "r1"])
        await self.assertMatches("?exclude_id=123,r1,r2,r3", ["r4", "r5"])

    async def test_in_last_modified_values_must_be_ints(self):
        r = await self.alice.get(RECS + "?in_last_modified=abc")
        self.assertInvalidQuery(r, "in_last_modified")
        await self.assertMatches(f"?in_last_modified={self.ts['r1']},{self.ts['r3']}", ["r1", "r3"])

    async def test_nul_character_rejected(self):
        r = await self.alice.get(RECS + "?s=a%00b")
        self.assertInvalidQuery(r, "s", "0x00")
        r = await self.alice.get(RECS + "?a%00b=1")
        self.assertEqual(r.status, 400, r)

    async def test_underscore_params_ignored(self):
        await self.assertMatches("?_expected=12345&_whatever=x", ["r1", "r2", "r3", "r4", "r5"])

    async def test_filters_on_other_resources(self):
        await self.alice.put(B + "/collections/zz", {"data": {"kind": "x"}})
        got = await self.ids("?kind=x", path=B + "/collections")
        self.assertEqual(got, ["zz"])
        got = await self.ids("?like_id=b", path="/v1/buckets")
        self.assertEqual(got, ["b"])


class CrossTypeOrderingTests(QueryCase):
    """null < string < number < boolean < array < object < missing."""

    ORDER = ["v_null", "v_str", "v_num", "v_bool", "v_arr", "v_obj", "v_missing"]

    async def setUp(self):
        await super().setUp()
        await self.alice.put(B + "/collections/mix")
        values = {"v_null": None, "v_str": "z", "v_num": 5, "v_bool": True, "v_arr": [1], "v_obj": {"a": 1}}
        for rid in reversed(self.ORDER):
            data = {"v": values[rid]} if rid in values else {}
            await self.alice.put(B + f"/collections/mix/records/{rid}", {"data": data})
        self.mix = B + "/collections/mix/records"

    async def test_sort_ascending(self):
        self.assertEqual(await self.ids("?_sort=v", path=self.mix), self.ORDER)

    async def test_sort_descending(self):
        self.assertEqual(await self.ids("?_sort=-v", path=self.mix), list(reversed(self.ORDER)))

    async def test_comparisons(self):
        self.assertEqual(sorted(await self.ids("?lt_v=5", path=self.mix)), sorted(["v_null", "v_str"]))
        self.assertEqual(
            sorted(await self.ids("?gt_v=5", path=self.mix)), sorted(["v_bool", "v_arr", "v_obj", "v_missing"])
        )


# ---------------------------------------------------------------------------------
# §3.4 sorting, §3.5 fields
# ---------------------------------------------------------------------------------
class SortTests(QueryCase):
    async def test_default_order_is_newest_first(self):
        self.assertEqual(await self.ids(""), ["r5", "r4", "r3", "r2", "r1"])

    async def test_sort_ascending_missing_last(self):
        self.assertEqual(await self.ids("?_sort=n"), ["r1", "r2", "r4", "r3", "r5"])
        self.assertEqual(await self.ids("?_sort=%2Bn"), ["r1", "r2", "r4", "r3", "r5"])

    async def test_sort_descending_missing_first(self):
        self.assertEqual(await self.ids("?_sort=-n"), ["r5", "r3", "r4", "r2", "r1"])

    async def test_multiple_sort_fields(self):
        self.assertEqual(await self.ids("?_sort=flag,-n"), ["r2", "r1", "r5", "r3", "r4"])

    async def test_tie_breaker_is_newest_first(self):
        self.assertEqual(await self.ids("?_sort=nested.x"), ["r2", "r3", "r1", "r5", "r4"])

    async def test_sort_by_last_modified(self):
        self.assertEqual(await self.ids("?_sort=last_modified"), ["r1", "r2", "r3", "r4", "r5"])
        self.assertEqual(await self.ids("?_sort=-last_modified"), ["r5", "r4", "r3", "r2", "r1"])

    async def test_sort_by_id(self):
        self.assertEqual(await self.ids("?_sort=-id"), ["r5", "r4", "r3", "r2", "r1"])

    async def test_invalid_sort_tokens_ignored(self):
        self.assertEqual(await self.ids("?_sort=n,%24bad"), ["r1", "r2", "r4", "r3", "r5"])


class FieldsTests(QueryCase):
    async def test_fields_projection(self):
        r = await self.alice.get(RECS + "?_fields=s&_sort=last_modified")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data[0], {"id": "r1", "last_modified": self.ts["r1"], "s": "Alpha"})
        self.assertEqual(r.data[4], {"id": "r5", "last_modified": self.ts["r5"]})

    async def test_fields_multiple_and_nested(self):
        r = await self.alice.get(RECS + "?_fields=n,nested.x&_sort=last_modified")
        self.assertEqual(r.data[0], {"id": "r1", "last_modified": self.ts["r1"], "n": 1, "nested": {"x": "foo"}})
        self.assertEqual(r.data[3], {"id": "r4", "last_modified": self.ts["r4"], "n": 3})

    async def test_fields_on_object(self):
        r = await self.alice.get(RECS + "/r1?_fields=tags,nested.y")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(
            r.data, {"id": "r1", "last_modified": self.ts["r1"], "tags": ["a", "b"], "nested": {"y": 1}}
        )

    async def test_fields_combined_with_filters(self):
        r = await self.alice.get(RECS + "?_fields=id&n=2")
        self.assertEqual(r.data, [{"id": "r2", "last_modified": self.ts["r2"]}])


# ---------------------------------------------------------------------------------
# §3.1 timestamps, §2.5 tombstones in filtered lists
# ---------------------------------------------------------------------------------
class TimestampFilterTests(QueryCase):
    async def test_since(self):
        await self.assertMatches(f"?_since={self.ts['r2']}", ["r3", "r4", "r5"])
        await self.assertMatches(qs(_since=f'"{self.ts["r2"]}"'), ["r3", "r4", "r5"])
        await self.assertMatches(f"?gt_last_modified={self.ts['r2']}", ["r3", "r4", "r5"])

    async def test_before(self):
        await self.assertMatches(f"?_before={self.ts['r3']}", ["r1", "r2"])
        await self.assertMatches(f"?lt_last_modified={self.ts['r3']}", ["r1", "r2"])
        await self.assertMatches(f"?_since={self.ts['r1']}&_before={self.ts['r4']}", ["r2", "r3"])

    async def test_to_is_deprecated_alias(self):
        r = await self.alice.get(RECS + f"?_to={self.ts['r3']}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(sorted(o["id"] for o in r.data), ["r1", "r2"])
        alert = json.loads(r.header("Alert"))
        self.assertEqual(alert["code"], "soft-eol")
        self.assertEqual(alert["message"], "_to is now deprecated, you should use _before instead")
        self.assertIn("url", alert)

    async def test_since_null_is_absent(self):
        await self.assertMatches("?_since=null", ["r1", "r2", "r3", "r4", "r5"])

    async def test_last_modified_equality(self):
        await self.assertMatches(f"?last_modified={self.ts['r3']}", ["r3"])

    async def test_invalid_timestamps(self):
        future = int(time.time() * 1000) + 2 * 24 * 3600 * 1000
        for name, value in (
            ("_since", "abc"),
            ("_before", "-1"),
            ("_to", "1.5"),
            ("gt_last_modified", "x"),
            ("_since", str(future)),
            ("last_modified", "abc"),
        ):
            r = await self.alice.get(RECS + qs((name, value)))
            self.assertInvalidQuery(r, name)

    async def test_tombstones_only_with_timestamp_filter(self):
        r = await self.alice.delete(RECS + "/r2")
        tomb = r.data
        self.assertNotIn("r2", await self.ids(""))
        self.assertNotIn("r2", await self.ids("?n=2"))
        for query in (
            f"?_since={self.ts['r1']}",
            f"?_before={tomb['last_modified'] + 1}",
            f"?gt_last_modified={self.ts['r1']}",
            f"?min_last_modified={tomb['last_modified']}",
            f"?in_last_modified={tomb['last_modified']}",
            f"?last_modified={tomb['last_modified']}",
            f"?not_last_modified={self.ts['r1']}",
        ):
            r = await self.alice.get(RECS + query)
            self.assertIn(tomb, r.data, query)

    async def test_tombstones_still_filtered(self):
        r = await self.alice.delete(RECS + "/r2")
        tomb = r.data
        r = await self.alice.get(RECS + "?_since=0&deleted=true")
        self.assertEqual(r.data, [tomb])
        # tombstones have no 'n' field
        await self.assertMatches("?_since=0&n=2", [])
        await self.assertMatches("?_since=0&in_id=r2,r3", ["r2", "r3"])

    async def test_plural_delete_filtered(self):
        r = await self.alice.delete(RECS + "?lt_n=3")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(sorted(t["id"] for t in r.data), ["r1", "r2"])
        await self.assertMatches("", ["r3", "r4", "r5"])


# ---------------------------------------------------------------------------------
# §3.3 pagination, §3.6 page sizes, counts
# ---------------------------------------------------------------------------------
class PaginationTests(QueryCase):
    def parse_next(self, r):
        nxt = r.header("Next-Page")
        self.assertIsNotNone(nxt, r.headers_all)
        parts = urlsplit(nxt)
        self.assertEqual((parts.scheme, parts.netloc), ("http", "localhost"))
        self.assertEqual(parts.path, RECS)
        return nxt, parse_qs(parts.query)

    async def collect(self, first_url, client=None, method="GET"):
        client = client or self.alice
        pages = []
        url = first_url
        while url:
            r = await client.request(method, url)
            self.assertEqual(r.status, 200, r)
            pages.append([o["id"] for o in r.data])
            url = r.header("Next-Page")
            self.assertLess(len(pages), 20)
        return pages

    async def test_limit_and_next_page(self):
        r = await self.alice.get(RECS + "?_limit=2")
        self.assertEqual([o["id"] for o in r.data], ["r5", "r4"])
        nxt, params = self.parse_next(r)
        self.assertEqual(params["_limit"], ["2"])
        self.assertIn("_token", params)
        pages = await self.collect(RECS + "?_limit=2")
        self.assertEqual(pages, [["r5", "r4"], ["r3", "r2"], ["r1"]])

    async def test_no_next_page_when_everything_fits(self):
        r = await self.alice.get(RECS + "?_limit=5")
        self.assertEqual(len(r.data), 5)
        self.assertIsNone(r.header("Next-Page"))
        r = await self.alice.get(RECS)
        self.assertIsNone(r.header("Next-Page"))

    async def test_next_page_keeps_params(self):
        r = await self.alice.get(RECS + "?_sort=n&has_n=true&_limit=2&_fields=n")
        self.assertEqual([o["id"] for o in r.data], ["r1", "r2"])
        _, params = self.parse_next(r)
        self.assertEqual(params["_sort"], ["n"])
        self.assertEqual(params["has_n"], ["true"])
        self.assertEqual(params["_fields"], ["n"])
        pages = await self.collect(RECS + "?_sort=n&has_n=true&_limit=2&_fields=n")
        self.assertEqual(pages, [["r1", "r2"], ["r4", "r3"]])

    async def test_keyset_pagination_survives_deletions(self):
        r = await self.alice.get(RECS + "?_sort=n&_limit=2")
        self.assertEqual([o["id"] for o in r.data], ["r1", "r2"])
        nxt = r.header("Next-Page")
        await self.alice.delete(RECS + "/r1")
        await self.alice.delete(RECS + "/r2")
        r = await self.alice.get(nxt)
        self.assertEqual([o["id"] for o in r.data], ["r4", "r3"])

    async def test_keyset_pagination_sees_later_inserts_after_cursor(self):
        r = await self.alice.get(RECS + "?_sort=n&_limit=2")
        nxt = r.header("Next-Page")
        await self.alice.put(RECS + "/mid", {"data": {"n": 2.5}})
        await self.alice.put(RECS + "/low", {"data": {"n": 0}})
        r = await self.alice.get(nxt)
        self.assertEqual([o["id"] for o in r.data], ["mid", "r4"])

    async def test_pagination_descending_with_missing_values(self):
        pages = await self.collect(RECS + "?_sort=-n&_limit=2")
        self.assertEqual(pages, [["r5", "r3"], ["r4", "r2"], ["r1"]])

    async def test_pagination_with_ties_uses_tie_breaker(self):
        await self.alice.put(B + "/collections/ties")
        path = B + "/collections/ties/records"
        for i in range(7):
            await self.alice.put(f"{path}/t{i}", {"data": {"v": i % 2}})
        pages = []
        url = path + "?_sort=v&_limit=2"
        while url:
            r = await self.alice.get(url)
            pages.extend(o["id"] for o in r.data)
            url = r.header("Next-Page")
        self.assertEqual(pages, ["t6", "t4", "t2", "t0", "t5", "t3", "t1"])

    async def test_pagination_on_nested_and_cross_type_sort(self):
        pages = await self.collect(RECS + "?_sort=nested.x,id&_limit=2")
        self.assertEqual(sum(pages, []), ["r2", "r1", "r3", "r4", "r5"])
        pages = await self.collect(RECS + "?_sort=typ&_limit=1")
        # string < number < array < object < missing
        self.assertEqual(sum(pages, []), ["r2", "r1", "r3", "r4", "r5"])

    async def test_next_page_preserves_encoded_filters(self):
        query = qs(in_typ='1,"1"', s="Alpha", _limit="1")
        pages = await self.collect(RECS + query)
        self.assertEqual(pages, [["r1"]])
        query = qs(like_s="a b", _limit="1")
        await self.alice.put(RECS + "/sp1", {"data": {"s": "a b c"}})
        await self.alice.put(RECS + "/sp2", {"data": {"s": "xa by"}})
        pages = await self.collect(RECS + query)
        self.assertEqual(pages, [["sp2"], ["sp1"]])

    async def test_pagination_with_since_includes_tombstones(self):
        await self.alice.delete(RECS + "/r1")
        await self.alice.delete(RECS + "/r3")
        pages = await self.collect(RECS + "?_since=0&_sort=id&_limit=2")
        self.assertEqual(pages, [["r1", "r2"], ["r3", "r4"], ["r5"]])

    async def test_get_tokens_are_reusable(self):
        r = await self.alice.get(RECS + "?_limit=2")
        nxt = r.header("Next-Page")
        first = await self.alice.get(nxt)
        second = await self.alice.get(nxt)
        self.assertEqual(first.data, second.data)

    async def test_malformed_token(self):
        for token in ("abc", "eyJmb28iOiAxfQ==", "%%%"):
            r = await self.alice.get(RECS + "?_limit=2&" + urlencode({"_token": token}))
            self.assertInvalidQuery(r, "_token", "_token has invalid content")

    async def test_invalid_limit(self):
        for value in ("-1", "abc", "1.5"):
            r = await self.alice.get(RECS + f"?_limit={value}")
            self.assertInvalidQuery(r, "_limit")

    async def test_head_has_no_next_page_and_counts_ignore_limit(self):
        r = await self.alice.head(RECS + "?_limit=2")
        self.assertEqual(r.status, 200)
        self.assertIsNone(r.header("Next-Page"))
        self.assertEqual(r.header("Total-Objects"), "5")
        self.assertEqual(r.header("Total-Records"), "5")

    async def test_head_counts_filtered(self):
        r = await self.alice.head(RECS + "?lt_n=3")
        self.assertEqual(r.header("Total-Objects"), "2")
        self.assertEqual(r.header("Total-Records"), "2")

    async def test_head_counts_visible_only(self):
        await self.alice.patch(C, {"permissions": {"record:create": [uid("bob")]}})
        await self.bob.post(RECS, {"data": {"mine": True}})
        r = await self.bob.head(RECS)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("Total-Objects"), "1")

    async def test_get_has_no_counts(self):
        r = await self.alice.get(RECS)
        self.assertIsNone(r.header("Total-Objects"))
        self.assertIsNone(r.header("Total-Records"))

    async def test_partial_listing_pagination(self):
        # bob sees only his own records; pages contain only those.
        await self.alice.patch(C, {"permissions": {"record:create": [uid("bob")]}})
        for i in range(3):
            await self.bob.post(RECS, {"data": {"id": f"b{i}"}})
        pages = await self.collect(RECS + "?_limit=2", client=self.bob)
        self.assertEqual(pages, [["b2", "b1"], ["b0"]])

    async def test_delete_with_limit_and_single_use_token(self):
        r = await self.alice.delete(RECS + "?_limit=2")
        self.assertEqual(r.status, 200, r)
        self.assertEqual([t["id"] for t in r.data], ["r5", "r4"])
        nxt, params = self.parse_next(r)
        self.assertEqual(params["_limit"], ["2"])
        r = await self.alice.delete(nxt)
        self.assertEqual(r.status, 200, r)
        self.assertEqual([t["id"] for t in r.data], ["r3", "r2"])
        r2 = await self.alice.delete(nxt)
        self.assertInvalidQuery(r2, "_token", "_token was already used or has expired.")
        await self.assertMatches("", ["r1"])


class PaginateBySettingTests(QueryCase):
    settings = {"paginate_by": "2"}

    async def test_paginate_by_forces_pages(self):
        r = await self.alice.get(RECS)
        self.assertEqual(len(r.data), 2)
        self.assertIn("_limit=2", r.header("Next-Page"))

    async def test_paginate_by_caps_limit(self):
        r = await self.alice.get(RECS + "?_limit=4")
        self.assertEqual(len(r.data), 2)
        self.assertEqual(parse_qs(urlsplit(r.header("Next-Page")).query)["_limit"], ["2"])

    async def test_smaller_limit_wins(self):
        r = await self.alice.get(RECS + "?_limit=1")
        self.assertEqual(len(r.data), 1)
        self.assertEqual(parse_qs(urlsplit(r.header("Next-Page")).query)["_limit"], ["1"])

    async def test_following_all_pages(self):
        pages = []
        url = RECS + "?_sort=n"
        while url:
            r = await self.alice.get(url)
            pages.append([o["id"] for o in r.data])
            url = r.header("Next-Page")
        self.assertEqual(pages, [["r1", "r2"], ["r4", "r3"], ["r5"]])

    async def test_head_counts_everything(self):
        r = await self.alice.head(RECS)
        self.assertEqual(r.header("Total-Records"), "5")


class MaxFetchSizeTests(QueryCase):
    settings = {"storage_max_fetch_size": "3"}

    async def test_max_fetch_size_caps_pages(self):
        r = await self.alice.get(RECS)
        self.assertEqual(len(r.data), 3)
        self.assertEqual(parse_qs(urlsplit(r.header("Next-Page")).query)["_limit"], ["3"])
        r = await self.alice.get(r.header("Next-Page"))
        self.assertEqual(len(r.data), 2)
        self.assertIsNone(r.header("Next-Page"))

    async def test_max_fetch_size_caps_limit(self):
        r = await self.alice.get(RECS + "?_limit=4")
        self.assertEqual(len(r.data), 3)


# ---------------------------------------------------------------------------------
# strict schemas (the permissions endpoint)
# ---------------------------------------------------------------------------------
class StrictSchemaTests(QueryCase):
    settings = {"experimental_permissions_endpoint": "true"}

    async def test_unknown_filter_field(self):
        r = await self.alice.get("/v1/permissions?foo=1")
        self.assertInvalidQuery(r, "foo", "Unknown filter field 'foo'")

    async def test_known_filter_field(self):
        r = await self.alice.get("/v1/permissions?resource_name=collection")
        self.assertEqual(r.status, 200, r)
        self.assertEqual([e["uri"] for e in r.data], ["/buckets/b/collections/c"])

    async def test_unknown_sort_field(self):
        r = await self.alice.get("/v1/permissions?_sort=foo")
        self.assertInvalidQuery(r, "_sort", "Unknown sort field")


class ExternalUrlTests(QueryCase):
    settings = {"http_scheme": "https", "http_host": "example.com:8443"}

    async def test_next_page_uses_configured_host(self):
        r = await self.alice.get(RECS + "?_limit=2")
        self.assertTrue(
            r.header("Next-Page").startswith("https://example.com:8443/v1/buckets/b/collections/c/records?"),
            r.header("Next-Page"),
        )

    async def test_plural_delete_with_bad_filter_400(self):
        r = await self.alice.delete(RECS + "?_since=abc")
        self.assertInvalidQuery(r, "_since")
        await self.assertMatches("", ["r1", "r2", "r3", "r4", "r5"])


class DefaultBucketPaginationTests(TestCase):
    async def test_next_page_uses_real_bucket_id(self):
        app = await build_app({"includes": "default_bucket", "paginate_by": "1"})
        alice = StubClient(app).as_user("alice")
        bucket = (await alice.get("/v1/")).json["user"]["bucket"]
        for rid in ("a", "b"):
            r = await alice.put(f"/v1/buckets/default/collections/c/records/{rid}")
            self.assertEqual(r.status, 201, r)
        r = await alice.get("/v1/buckets/default/collections/c/records")
        nxt = r.header("Next-Page")
        self.assertTrue(
            nxt.startswith(f"http://localhost/v1/buckets/{bucket}/collections/c/records?"), nxt
        )
        r = await alice.get(nxt)
        self.assertEqual([o["id"] for o in r.data], ["a"])


from jsonsync.testclient import with_postgresql_variants  # noqa: E402

with_postgresql_variants(globals())
