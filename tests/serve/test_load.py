"""Bounded loopback load test: 20 concurrent clients against uvicorn, each sending a valid request (retried on 429
after Retry-After) and malformed ones; every request is answered, every accepted job finishes, none is lost."""

import concurrent.futures
import json
import time

import httpx

from tests.serve.conftest import MAX_BODY, wait_done

CLIENTS = 20
TIME_LIMIT_S = 150     # the whole test; about 20 tiny jobs at ~1 s each on a busy 2-core CPU
MAX_TRIES = 60


def _client_session(base, k):
  """One client: its answers as (kind, status) and the id of its accepted job."""
  answers, job_id = [], None
  with httpx.Client(base_url=base, timeout=60) as http:
    bad = [
        ("malformed_json", lambda: http.post("/v1/videos", content=b'{"prompt": ',
                                             headers={"content-type": "application/json"})),
        ("bad_field", lambda: http.post("/v1/videos", json={"prompt": "x", "frames": 4 + 2 * (k % 3)})),
        ("oversized", lambda: http.post("/v1/videos", content=json.dumps({"prompt": "y" * (MAX_BODY + k)}),
                                        headers={"content-type": "application/json"})),
        ("unknown_id", lambda: http.get(f"/v1/videos/{k:032x}")),
    ]
    for kind, send in bad[k % 4:] + bad[:k % 4]:   # each client its own order
      answers.append((kind, send().status_code))
    for _ in range(MAX_TRIES):
      r = http.post("/v1/videos", json={"prompt": f"client {k}", "seed": k})
      answers.append(("valid", r.status_code))
      if r.status_code == 202:
        job_id = r.json()["id"]
        break
      assert r.status_code == 429, r.text
      time.sleep(min(float(r.headers["retry-after"]), 2.0))
    job = wait_done(http.get, job_id, timeout=TIME_LIMIT_S) if job_id else None
  return answers, job_id, job


def test_twenty_concurrent_clients(live_url, service):
  t0 = time.time()
  with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
    results = list(pool.map(lambda k: _client_session(live_url, k), range(CLIENTS)))
  elapsed = time.time() - t0
  expected = {"malformed_json": {422}, "bad_field": {422}, "oversized": {413}, "unknown_id": {404},
              "valid": {202, 429}}
  for answers, _, _ in results:
    assert all(status in expected[kind] for kind, status in answers), answers
  ids = [job_id for _, job_id, _ in results]
  assert None not in ids, "a client never got its job accepted"
  assert len(set(ids)) == CLIENTS
  assert all(job["status"] == "succeeded" for _, _, job in results), [j["error"] for _, _, j in results]
  assert all(j["request"]["prompt"] == f"client {k}" for k, (_, _, j) in enumerate(results))
  listed = {j["id"] for j in httpx.get(live_url + "/v1/videos?limit=500").json()["jobs"]}
  assert set(ids) <= listed, "an accepted job is missing from the list"
  assert sum(s == 429 for a, _, _ in results for _, s in a) >= 1, "the load never filled the queue"
  assert elapsed < TIME_LIMIT_S, f"took {elapsed:.0f} s"
