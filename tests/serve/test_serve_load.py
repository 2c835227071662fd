"""A bounded load test on loopback: 200 job requests from 8 concurrent clients against a real server (each
client over its per-client job limit retries after the server's Retry-After, as the page does)."""

from __future__ import annotations

import json
import threading
import time

CLIENTS = 8
PER_CLIENT = 25
DISTINCT = 150  # requests n and n + 150 ask for the same computation (from different clients)


def params(n: int) -> dict:
    k = n % DISTINCT
    return {"kind": "saliency", "image": f"sample:{k % 64}", "target": (k // 64 + 3 * k) % 10, "methods": ["gradient"]}


def test_200_requests_from_8_clients_lose_no_result(live_server, viewer):
    errors: list[str] = []
    jobs: dict[int, str] = {}
    results: dict[int, dict] = {}
    lock = threading.Lock()
    retried = [0]
    start = threading.Barrier(CLIENTS)

    def client(i: int) -> None:
        conn = live_server.connection(timeout=60)
        try:
            start.wait()
            mine = {}
            for j in range(PER_CLIENT):
                n = i * PER_CLIENT + j
                for _ in range(60):  # as the page does: a 429 is retried after its Retry-After
                    conn.request("POST", "/api/jobs", body=json.dumps(params(n)),
                                 headers={"Content-Type": "application/json", "Host": live_server.host,
                                          "X-Netvis-Client": f"tab-{i}"})
                    response = conn.getresponse()
                    body = response.read()
                    if response.status != 429:
                        break
                    with lock:
                        retried[0] += 1
                    time.sleep(float(response.getheader("Retry-After")) / 4)
                if response.status != 202:
                    errors.append(f"submit {n}: {response.status} {body[:200]!r}")
                    continue
                mine[n] = json.loads(body)["id"]
            deadline = time.monotonic() + 120
            for n, job_id in mine.items():
                while True:
                    conn.request("GET", f"/api/jobs/{job_id}", headers={"Host": live_server.host})
                    response = conn.getresponse()
                    job = json.loads(response.read())
                    if response.status != 200 or job["status"] in ("error", "cancelled"):
                        errors.append(f"job {n} {job_id}: {response.status} {job}")
                        break
                    if job["status"] == "done":
                        conn.request("GET", job["result"]["maps"][0]["url"], headers={"Host": live_server.host})
                        picture = conn.getresponse()
                        data = picture.read()
                        if picture.status != 200 or not data.startswith(b"\x89PNG"):
                            errors.append(f"picture of job {n}: {picture.status}")
                        with lock:
                            results[n] = job["result"]
                        break
                    if time.monotonic() > deadline:
                        errors.append(f"job {n} {job_id} did not finish")
                        break
                    time.sleep(0.02)
            with lock:
                jobs.update(mine)
        except Exception as exc:  # reported below with the others
            errors.append(f"client {i}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    total = CLIENTS * PER_CLIENT
    assert len(jobs) == total and len(results) == total
    for n in range(total):
        wanted = params(n)
        assert results[n]["image"] == wanted["image"] and results[n]["target"] == wanted["target"]
        assert [m["method"] for m in results[n]["maps"]] == ["gradient"]
    for n in range(total - DISTINCT):  # a repeated request got the same result (usually the same job)
        assert results[n] == results[n + DISTINCT]
    assert viewer.jobs.counts().get("error", 0) == 0
    status, health = live_server.json("GET", "/api/health")
    assert status == 200 and health["ok"]
