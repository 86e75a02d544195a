#!/usr/bin/env python3
"""A git smart-HTTP server for the tests: `git http-backend` (CGI) behind
HTTP basic auth, on 127.0.0.1 and a port the kernel picks.

    python3 git_http.py --root DIR --user U --password-file FILE \
        --port-file PORTFILE [--log FILE]

Serves the repositories under DIR read-only (upload-pack only). Every request
needs basic auth with exactly U and the password in FILE (trailing newline
ignored); anything else gets 401 with `WWW-Authenticate: Basic realm="git"`.
If DIR/.delay exists and holds a number, each request waits that many seconds
before it is answered. The log gets one line per request,
`METHOD PATH STATUS user=NAME` (NAME as the client sent it, `-` without
credentials), written before the response is sent; never the password nor
the Authorization header. SIGTERM (or the parent going away) stops it.
"""

import argparse
import base64
import binascii
import hmac
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024


def git_http_backend():
    exec_path = subprocess.run(
        ["git", "--exec-path"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return os.path.join(exec_path, "git-http-backend")


def read_password(path):
    with open(path, "rb") as f:
        data = f.read()
    # A trailing newline is not part of the password.
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    return data


def printable_user(user):
    """The user name as it goes in the log: short, one token."""
    if user is None:
        return "-"
    text = "".join(c if c.isprintable() and not c.isspace() else "?" for c in user)
    return text[:64] or "''"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "git-http-test"
    sys_version = ""
    # Set on the class by main().
    root = ""
    user = b""
    password = b""
    backend = ""
    log_file = None
    log_lock = threading.Lock()

    # --- plumbing -----------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
        # The stdlib's access log is replaced by log_request_line.
        pass

    def log_request_line(self, status, user):
        if self.log_file is None:
            return
        path = self.path.replace("\n", "?").replace("\r", "?")
        line = f"{self.command} {path} {status} user={printable_user(user)}\n"
        with self.log_lock:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()

    def delay(self):
        try:
            with open(os.path.join(self.root, ".delay"), encoding="utf-8") as f:
                seconds = float(f.read().strip() or "0")
        except (OSError, ValueError):
            return
        if seconds > 0:
            time.sleep(seconds)

    def credentials(self):
        """(user, ok): the user name sent (None without Basic credentials)
        and whether user and password are the expected ones."""
        header = self.headers.get("Authorization")
        if not header:
            return None, False
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None, False
        user, sep, password = decoded.partition(b":")
        name = user.decode("utf-8", "replace")
        if not sep:
            return name, False
        ok = hmac.compare_digest(user, self.user) & hmac.compare_digest(
            password, self.password
        )
        return name, bool(ok)

    def read_body(self):
        """The request body, with any chunked transfer coding removed (a
        Content-Encoding such as gzip is left alone)."""
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("body ended inside a chunk header")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while True:
                        trailer = self.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                data = self.rfile.read(size)
                if len(data) != size:
                    raise ConnectionError("body ended inside a chunk")
                parts.append(data)
                self.rfile.readline(3)  # the CRLF after the chunk
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise ConnectionError("body shorter than Content-Length")
        return data

    def deny(self, user):
        self.log_request_line(401, user)
        body = b"authentication required\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        # The body of the request (if any) was not read: start afresh.
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def fail(self, status, user, message):
        self.log_request_line(status, user)
        body = message.encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    # --- the requests -------------------------------------------------

    def do_GET(self):
        self.serve()

    def do_POST(self):
        self.serve()

    def serve(self):
        try:
            self.delay()
            user, ok = self.credentials()
            if not ok:
                self.deny(user)
                return
            try:
                body = self.read_body() if self.command == "POST" else b""
            except (ValueError, ConnectionError) as e:
                self.fail(400, user, f"bad request body: {e}")
                return
            self.run_cgi(user, body)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (a test killed it, say).
            self.close_connection = True

    def cgi_env(self, user, body):
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            # Read-only, whatever a repository's own config says (with
            # REMOTE_USER set, http-backend would otherwise enable pushes).
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.receivepack",
            "GIT_CONFIG_VALUE_0": "false",
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_SOFTWARE": self.server_version,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.server.server_address[1]),
            "REMOTE_ADDR": self.client_address[0],
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(path),
            "QUERY_STRING": query,
            "REMOTE_USER": user,
            "AUTH_TYPE": "Basic",
        }
        if "HOME" in os.environ:
            env["HOME"] = os.environ["HOME"]
        if self.command == "POST":
            env["CONTENT_LENGTH"] = str(len(body))
        content_type = self.headers.get("Content-Type")
        if content_type:
            env["CONTENT_TYPE"] = content_type
        encoding = self.headers.get("Content-Encoding")
        if encoding:
            env["HTTP_CONTENT_ENCODING"] = encoding
        protocol = self.headers.get("Git-Protocol")
        if protocol:
            env["GIT_PROTOCOL"] = protocol
            env["HTTP_GIT_PROTOCOL"] = protocol
        return env

    def run_cgi(self, user, body):
        proc = subprocess.Popen(
            [self.backend],
            env=self.cgi_env(user, body),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # http-backend's complaints go to this server's stderr.
            stderr=None,
            cwd=self.root,
        )

        def feed():
            try:
                if body:
                    proc.stdin.write(body)
            except BrokenPipeError:
                pass
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            self.relay(proc, user)
        finally:
            proc.stdout.close()
            feeder.join()
            proc.wait()

    def relay(self, proc, user):
        """Sends the CGI's answer: its headers (Status: among them), then its
        body, as it comes."""
        status, reason, headers, length = 200, None, [], None
        got_headers = False
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            line = line.rstrip(b"\r\n")
            if not line:
                got_headers = True
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip(), value.strip()
            if name.lower() == "status":
                code, _, reason = value.partition(" ")
                status = int(code)
            elif name.lower() == "content-length":
                length = int(value)
            else:
                headers.append((name, value))
        if not got_headers:
            self.fail(502, user, "git http-backend gave no answer")
            return

        self.log_request_line(status, user)
        self.send_response(status, reason or None)
        for name, value in headers:
            self.send_header(name, value)
        chunked = length is None and self.request_version == "HTTP/1.1"
        if length is not None:
            self.send_header("Content-Length", str(length))
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

        sent = 0
        while length is None or sent < length:
            want = CHUNK if length is None else min(CHUNK, length - sent)
            data = proc.stdout.read1(want)
            if not data:
                break
            sent += len(data)
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        elif length is not None and sent < length:
            # The CGI promised more than it gave: the client must not wait.
            self.close_connection = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log")
    args = parser.parse_args()

    Handler.root = os.path.realpath(args.root)
    Handler.user = args.user.encode()
    Handler.password = read_password(args.password_file)
    Handler.backend = git_http_backend()
    Handler.log_file = args.log
    if args.log:
        open(args.log, "a").close()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        # shutdown() waits for serve_forever(), which runs in this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    parent = os.getppid()

    def orphaned():
        # Not to outlive a test process killed without its Drop.
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, daemon=True).start()

    port = server.server_address[1]
    tmp = f"{args.port_file}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{port}\n")
    os.replace(tmp, args.port_file)

    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
