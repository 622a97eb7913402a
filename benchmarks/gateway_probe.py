"""Runs on a serving host (copied there by bench_gateway.py): the same load, direct and via the gateway.

Standard library only, so it runs with the host's own python3. Both paths start on the host's
loopback, so the only difference is nginx. Rounds alternate (direct, gateway, direct, ...) so
drift in the machine's load hits both alike. Bounded: a fixed number of requests per round.

    python3 gateway_probe.py SPEC_JSON      -> prints one JSON result on stdout
"""

import http.client
import json
import statistics
import sys
import threading
import time


def read_key(path):
    for line in open(path, encoding="utf-8"):
        if line.startswith("VLLM_API_KEY="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("no VLLM_API_KEY in %s" % path)


def latencies(port, key, count):
    """``count`` sequential GET /v1/models on one keep-alive connection; seconds each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": "Bearer " + key}
    out = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", "/v1/models", headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit("GET /v1/models on port %d: HTTP %d" % (port, response.status))
        out.append(time.perf_counter() - started)
    conn.close()
    return out


def throughput(ports, key, model, workers, per_worker, max_tokens):
    """Completions from ``workers`` threads, each sending ``per_worker``, spread over ``ports``."""
    body = json.dumps({"model": model, "prompt": "你好，", "max_tokens": max_tokens, "ignore_eos": True,
                       "temperature": 0})
    headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
    errors = []
    tokens = [0]
    lock = threading.Lock()

    def worker(index):
        port = ports[index % len(ports)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(per_worker):
            conn.request("POST", "/v1/completions", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            with lock:
                if response.status != 200:
                    errors.append(response.status)
                else:
                    tokens[0] += json.loads(data)["usage"]["completion_tokens"]
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"requests": workers * per_worker, "errors": len(errors), "seconds": elapsed,
            "requests_per_s": workers * per_worker / elapsed, "output_tokens_per_s": tokens[0] / elapsed}


def main():
    spec = json.loads(sys.argv[1])
    key = read_key(spec["key_file"])
    paths = {"direct": spec["replica_ports"], "gateway": [spec["gateway_port"]]}
    result = {name: {"latency_s": [], "load": []} for name in paths}
    for _ in range(spec["rounds"]):
        for name, ports in paths.items():
            for port in ports:  # every replica (or the gateway) gets the same share of probes
                result[name]["latency_s"] += latencies(port, key, spec["latency_requests"] // len(ports))
            result[name]["load"].append(throughput(ports, key, spec["model"], spec["workers"],
                                                   spec["per_worker"], spec["max_tokens"]))
    summary = {}
    for name, data in result.items():
        lat = sorted(data["latency_s"])
        loads = data["load"]
        summary[name] = {
            "latency_p50_ms": statistics.median(lat) * 1000,
            "latency_p90_ms": lat[int(0.9 * (len(lat) - 1))] * 1000,
            "latency_mean_ms": statistics.fmean(lat) * 1000,
            "probes": len(lat),
            "requests_per_s": sum(x["requests"] for x in loads) / sum(x["seconds"] for x in loads),
            "output_tokens_per_s": statistics.fmean(x["output_tokens_per_s"] for x in loads),
            "errors": sum(x["errors"] for x in loads),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
