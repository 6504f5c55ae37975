"""One started `infer.serve.Service` on the tiny preset (random tiny models, 2 UniPC steps) for all serve tests,
an in-process TestClient over it, and a real uvicorn server on a free loopback port (browser and load tests)."""

import threading
import time

import pytest

MAX_QUEUE = 3
MAX_BODY = 64 * 1024
MAX_FRAMES = 9


@pytest.fixture(scope="session")
def service():
  from configs.sample import tiny
  from infer import serve
  svc = serve.Service(tiny.get_config("steps=2"), serve.ServeOptions(
      max_queue=MAX_QUEUE, max_body_bytes=MAX_BODY, max_frames=MAX_FRAMES)).start()
  yield svc
  svc.stop()


@pytest.fixture(scope="session")
def client(service):
  from fastapi.testclient import TestClient
  from infer import serve
  with TestClient(serve.create_app(service)) as c:
    yield c


@pytest.fixture(scope="session")
def live_url(service):
  """http://127.0.0.1:<free port> served by uvicorn in a thread (the same service)."""
  import uvicorn
  from infer import serve
  server = uvicorn.Server(uvicorn.Config(serve.create_app(service), host="127.0.0.1", port=0, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  deadline = time.time() + 30
  while not server.started:
    assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
    time.sleep(0.05)
  port = server.servers[0].sockets[0].getsockname()[1]
  yield f"http://127.0.0.1:{port}"
  server.should_exit = True
  thread.join(timeout=10)


def wait_done(get, job_id, timeout=120):
  """Polls the status endpoint until the job is finished; returns its JSON."""
  deadline = time.time() + timeout
  while True:
    r = get(f"/v1/videos/{job_id}")
    assert r.status_code == 200, r.text
    job = r.json()
    if job["status"] in ("succeeded", "failed"):
      return job
    assert time.time() < deadline, f"job {job_id} still {job['status']} after {timeout} s"
    time.sleep(0.05)
