#!/usr/bin/env python3
"""A real SMTP server for warden's tests (aiosmtpd).

Every message it receives is parsed with Python's email package and written
to DIR/NNN.json: envelope, headers and the decoded text and HTML parts, so
tests can read back exactly what a recipient would see.

    python3 tests/smtp_server.py --port 2525 --dir /tmp/mail
Prints "READY <port>" once it accepts connections.
"""
import argparse, asyncio, email, email.policy, json, os, signal, sys

from aiosmtpd.controller import Controller


class Store:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parts = {}
        for part in msg.walk():
            ctype = part.get_content_type()
            if ctype in ("text/plain", "text/html") and ctype not in parts:
                parts[ctype] = part.get_content()
        self.count += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": msg["subject"],
            "from": msg["from"],
            "to": msg["to"],
            "cc": msg["cc"],
            "bcc_header": msg["bcc"],
            "message_id": msg["message-id"],
            "content_type": msg.get_content_type(),
            "text": parts.get("text/plain"),
            "html": parts.get("text/html"),
            "raw_headers": [f"{k}: {v}" for k, v in msg.items()],
        }
        path = os.path.join(self.directory, f"{self.count:03}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    controller = Controller(Store(args.dir), hostname="127.0.0.1", port=args.port)
    controller.start()
    print(f"READY {args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    sys.exit(main())
