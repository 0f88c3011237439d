# A client of the Docker plugin socket for the tests (HTTP/1.1 over a Unix socket), three modes:
#   cases SOCKET                    requests listed as JSON on stdin ({path, body, kind}); each
#                                   answer must be an error (non-200, JSON with a non-empty "Err")
#                                   or, for kind "remove", may be a 200 without "Err"
#   flood SOCKET TOTAL CONNS NETID  TOTAL requests over CONNS keep-alive connections, garbage and
#                                   well-formed requests with unknown ids mixed
#   call SOCKET PATH                one request, its body on stdin
# Each prints a JSON summary on stdout.
import http.client, json, random, socket, sys, threading, time

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.unix_path = path
    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s

HEADERS = {"Accept": "application/vnd.docker.plugins.v1.2+json"}

def post(conn, path, body):
    conn.request("POST", path, body=body, headers=HEADERS)
    r = conn.getresponse()
    return r.status, r.read()

def why_wrong(kind, status, raw):
    try:
        body = json.loads(raw)
    except Exception:
        body = None
    err = body.get("Err") if isinstance(body, dict) else None
    has_err = isinstance(err, str) and err != ""
    if status == 200:
        if kind == "remove":
            return None if isinstance(body, dict) and not has_err else "200 without a plain JSON object"
        return "200 where an error was due"
    if not has_err:
        return "error status without a JSON Err string"
    return None

def cases(sock):
    out = []
    for q in json.load(sys.stdin):
        conn = UnixHTTPConnection(sock)
        try:
            status, raw = post(conn, q["path"], q["body"].encode())
            out.append({"path": q["path"], "kind": q["kind"], "status": status,
                        "body": raw.decode("utf-8", "replace"), "why": why_wrong(q["kind"], status, raw)})
        except Exception as e:
            out.append({"path": q["path"], "kind": q["kind"], "status": 0, "body": "",
                        "why": "no answer: %r" % e})
        finally:
            conn.close()
    json.dump(out, sys.stdout)

PARSED = ["/NetworkDriver.CreateNetwork", "/NetworkDriver.DeleteNetwork",
          "/NetworkDriver.CreateEndpoint", "/NetworkDriver.EndpointOperInfo",
          "/NetworkDriver.DeleteEndpoint", "/NetworkDriver.Join", "/NetworkDriver.Leave",
          "/IpamDriver.RequestPool", "/IpamDriver.ReleasePool", "/IpamDriver.RequestAddress",
          "/IpamDriver.ReleaseAddress"]

def hexid(rng):
    return "%064x" % rng.getrandbits(256)

def garbage(rng):
    k = rng.randrange(7)
    if k == 0: return b"{"
    if k == 1: return b'{"NetworkID": "' + hexid(rng).encode()
    if k == 2: return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 512)))
    if k == 3: return b"[" * 5000 + b"]" * 5000
    if k == 4: return b'{"NetworkID": 5, "EndpointID": [], "PoolID": {}, "Interface": 7}'
    if k == 5: return b"null"
    return b"\xff\xfe" + b"x" * rng.randrange(1, 2000)

def request(rng, known):
    if rng.random() < 0.5:
        return rng.choice(PARSED), garbage(rng), "error"
    nid = known if rng.random() < 0.3 else hexid(rng)
    eid = hexid(rng)
    pool = "nosuchpool-" + hexid(rng)[:16]
    choices = [
        ("/NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid,
            "SandboxKey": "/var/run/docker/netns/%012x" % rng.getrandbits(48), "Options": {}}, "error"),
        ("/NetworkDriver.EndpointOperInfo", {"NetworkID": nid, "EndpointID": eid}, "error"),
        ("/NetworkDriver.Leave", {"NetworkID": nid, "EndpointID": eid}, "remove"),
        ("/NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid}, "remove"),
        ("/IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}}, "error"),
        ("/IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": "10.30.0.9"}, "remove"),
        ("/IpamDriver.ReleasePool", {"PoolID": pool}, "remove"),
    ]
    if nid != known:
        choices += [
            ("/NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                "Interface": {"Address": "10.30.0.%d/24" % rng.randrange(2, 250),
                              "AddressIPv6": "", "MacAddress": ""}, "Options": {}}, "error"),
            ("/NetworkDriver.DeleteNetwork", {"NetworkID": nid}, "remove"),
        ]
    path, body, kind = rng.choice(choices)
    return path, json.dumps(body).encode(), kind

def flood(sock, total, conns, known):
    lock = threading.Lock()
    st = {"answered": 0, "unanswered": 0, "unanswered_samples": [], "reconnects": 0,
          "violations": 0, "samples": [], "by_answer": {}}
    per = [total // conns + (1 if i < total % conns else 0) for i in range(conns)]
    def worker(i):
        rng = random.Random(i)
        conn = UnixHTTPConnection(sock)
        for _ in range(per[i]):
            path, body, kind = request(rng, known)
            answer = None
            for attempt in range(2):
                try:
                    answer = post(conn, path, body)
                    break
                except Exception as e:
                    conn.close()
                    conn = UnixHTTPConnection(sock)
                    with lock:
                        st["reconnects"] += 1
                        if attempt == 1:
                            st["unanswered"] += 1
                            if len(st["unanswered_samples"]) < 10:
                                st["unanswered_samples"].append("%s: %r" % (path, e))
            if answer is None:
                continue
            status, raw = answer
            why = why_wrong(kind, status, raw)
            with lock:
                st["answered"] += 1
                key = "%s %s %d" % (path, kind, status)
                st["by_answer"][key] = st["by_answer"].get(key, 0) + 1
                if why:
                    st["violations"] += 1
                    if len(st["samples"]) < 10:
                        st["samples"].append({"path": path, "kind": kind, "status": status,
                            "sent": body[:120].decode("utf-8", "replace"),
                            "body": raw[:300].decode("utf-8", "replace"), "why": why})
        conn.close()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
    start = time.monotonic()
    for t in threads: t.start()
    for t in threads: t.join()
    st["seconds"] = round(time.monotonic() - start, 3)
    json.dump(st, sys.stdout)

def call(sock, path):
    conn = UnixHTTPConnection(sock)
    try:
        status, raw = post(conn, path, sys.stdin.buffer.read())
    finally:
        conn.close()
    json.dump({"status": status, "body": raw.decode("utf-8", "replace")}, sys.stdout)

if sys.argv[1] == "cases":
    cases(sys.argv[2])
elif sys.argv[1] == "call":
    call(sys.argv[2], sys.argv[3])
else:
    flood(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
