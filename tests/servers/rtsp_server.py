#!/usr/bin/python3
"""A real RTSP server (GStreamer gst-rtsp-server) for the camera-ingest tests.

Runs under the Debian system Python (``/usr/bin/python3``), which has the GObject
introspection bindings (``python3-gi``, ``python3-gst-1.0``, ``gir1.2-gst-rtsp-server-1.0``);
it must not import the project or numpy. ``tests/media_fixtures.py`` starts it as a
subprocess; ``bash scripts/test.sh`` installs the Debian packages.

It serves one H.264 stream at ``rtsp://127.0.0.1:PORT/MOUNT`` from a shared media factory:
all clients watch the same pipeline, but every client has its own RTSP connection and its
own RTSP session (SETUP). Sources:

* ``--source test``: ``videotestsrc is-live=true`` (a moving ball by default) encoded by
  ``x264enc`` (zero latency, no B-frames, a key frame every ``--keyint`` frames).
* ``--source file --file X.mp4``: the H.264 track of an MP4, looped forever. A feeder
  pipeline (``filesrc ! qtdemux ! h264parse ! appsink sync=true``) plays the file in real
  time and loops it with segment seeks; the RTSP media is a live ``appsrc`` fed with those
  access units (starting at a key frame), so every client joins the same live stream.
  ``--width/--height/--fps`` do not apply (the file's own are used).

Events go to stdout, one JSON object a line, flushed::

    {"event": "ready", "port": N, "mount": "/cam"}
    {"event": "client-connected", "clients": n, "clients_total": t}   # TCP connection
    {"event": "client-closed", "clients": n}
    {"event": "session-new", "sessions": n, "sessions_total": t}      # RTSP SETUP
    {"event": "session-removed", "sessions": n}                        # TEARDOWN or close
    {"event": "describe" | "play" | "teardown", "clients": n}
    {"event": "media-configured", "medias_total": t}                   # a pipeline was built
    {"event": "media-unprepared"}
    {"event": "file-looped", "loops": n}                               # --source file
    {"event": "stopped"}

SIGTERM/SIGINT (and, with ``--exit-on-stdin-eof``, stdin closing because the parent died)
close every client connection and exit with status 0. A missing GStreamer
piece gives ``{"event": "error", "message": ...}`` and exit status 2; ``--check`` only checks
the install (``{"event": "ok"}``, status 0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

_print_lock = threading.Lock()

#: The GStreamer elements this server needs, and the Debian package of each.
REQUIRED_ELEMENTS = {
    "videotestsrc": "gstreamer1.0-plugins-base",
    "appsrc": "gstreamer1.0-plugins-base",
    "appsink": "gstreamer1.0-plugins-base",
    "x264enc": "gstreamer1.0-plugins-ugly",
    "h264parse": "gstreamer1.0-plugins-bad",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "qtdemux": "gstreamer1.0-plugins-good",
}


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields})
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
except (ImportError, ValueError) as exc:  # python3-gi / gir1.2-gst-rtsp-server-1.0 missing
    emit("error", message=f"GStreamer Python bindings unavailable: {exc}")
    sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--source", choices=["test", "file"], default="test")
    parser.add_argument("--file", default=None, help="MP4 with an H.264 track (--source file)")
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern (ball, smpte...)")
    parser.add_argument("--bitrate", type=int, default=800, help="x264enc bitrate, kbit/s")
    parser.add_argument("--keyint", type=int, default=0, help="key frame interval, 0 = 2*fps")
    parser.add_argument("--user", default=None)
    parser.add_argument("--password", default=None)
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (the parent test process died): no orphan servers",
    )
    parser.add_argument(
        "--check", action="store_true", help="only check the GStreamer install (exit 0 if ok)"
    )
    args = parser.parse_args(argv)
    if args.source == "file" and not args.file:
        parser.error("--source file needs --file")
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")
    if not args.mount.startswith("/"):
        args.mount = "/" + args.mount
    return args


def test_launch(args: argparse.Namespace) -> str:
    keyint = args.keyint or max(1, 2 * args.fps)
    return (
        f"( videotestsrc is-live=true pattern={args.pattern} "
        f"! video/x-raw,format=I420,width={args.width},height={args.height},"
        f"framerate={args.fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast bitrate={args.bitrate} "
        f"key-int-max={keyint} bframes=0 "
        "! h264parse config-interval=-1 "
        "! rtph264pay name=pay0 pt=96 config-interval=0 )"
    )


# SPS/PPS go in band once per key frame (h264parse config-interval=-1); the payloader must not
# add its own (config-interval=0): it would put them before every IDR *slice*, x264 makes
# several slices a frame, and FFmpeg would then decode every key frame twice.

FILE_MEDIA_LAUNCH = (
    "( appsrc name=src is-live=true format=time do-timestamp=true "
    "caps=video/x-h264,stream-format=byte-stream,alignment=au "
    "! h264parse "
    "! rtph264pay name=pay0 pt=96 config-interval=0 )"
)


class FileFeeder:
    """Plays an MP4's H.264 track in real time, looping, and feeds the current RTSP media."""

    def __init__(self, path: str) -> None:
        self.pipeline = Gst.parse_launch(
            "filesrc name=file ! qtdemux name=demux "
            "! h264parse config-interval=-1 "
            "! video/x-h264,stream-format=byte-stream,alignment=au "
            "! appsink name=sink sync=true emit-signals=true max-buffers=4 drop=true"
        )
        self.pipeline.get_by_name("file").set_property("location", path)
        self.lock = threading.Lock()
        self.appsrc: Gst.Element | None = None
        self.need_keyframe = True
        self.loops = 0
        self.sink = self.pipeline.get_by_name("sink")
        self.sink.connect("new-sample", self._on_sample)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self._on_message)

    def start(self) -> None:
        self.pipeline.set_state(Gst.State.PAUSED)
        result, _state, _pending = self.pipeline.get_state(10 * Gst.SECOND)
        if result == Gst.StateChangeReturn.FAILURE:
            message = self.pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
            detail = message.parse_error()[0].message if message is not None else "unknown"
            raise RuntimeError(f"cannot play the file: {detail}")
        # A segment seek: at the end we get SEGMENT_DONE instead of EOS and seek back to the
        # start without flushing, so the running time (and the real-time pacing) goes on.
        self.pipeline.seek(
            1.0,
            Gst.Format.TIME,
            Gst.SeekFlags.FLUSH | Gst.SeekFlags.SEGMENT,
            Gst.SeekType.SET,
            0,
            Gst.SeekType.NONE,
            -1,
        )
        self.pipeline.set_state(Gst.State.PLAYING)

    def stop(self) -> None:
        self.pipeline.set_state(Gst.State.NULL)

    def attach(self, appsrc: Gst.Element | None) -> None:
        with self.lock:
            self.appsrc = appsrc
            self.need_keyframe = True

    def _on_message(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.SEGMENT_DONE:
            self.loops += 1
            emit("file-looped", loops=self.loops)
            self.pipeline.seek(
                1.0,
                Gst.Format.TIME,
                Gst.SeekFlags.SEGMENT,
                Gst.SeekType.SET,
                0,
                Gst.SeekType.NONE,
                -1,
            )
        elif message.type == Gst.MessageType.ERROR:
            err, debug = message.parse_error()
            emit("error", message=f"file feeder: {err.message}", debug=debug)
        elif message.type == Gst.MessageType.EOS:
            emit("error", message="file feeder: unexpected EOS")

    def _on_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.OK
        with self.lock:
            appsrc = self.appsrc
            if appsrc is None:
                return Gst.FlowReturn.OK
            buffer = sample.get_buffer()
            if self.need_keyframe:
                if buffer.has_flags(Gst.BufferFlags.DELTA_UNIT):
                    return Gst.FlowReturn.OK
                self.need_keyframe = False
        out = buffer.copy()
        # appsrc do-timestamp stamps it with the media pipeline's running time.
        out.pts = Gst.CLOCK_TIME_NONE
        out.dts = Gst.CLOCK_TIME_NONE
        out.duration = Gst.CLOCK_TIME_NONE
        appsrc.emit("push-buffer", out)
        return Gst.FlowReturn.OK


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clients = 0
        self.clients_total = 0
        self.sessions_total = 0
        self.medias_total = 0
        self._client_sessions: dict[GstRtspServer.RTSPClient, list[GstRtspServer.RTSPSession]] = {}
        self.loop = GLib.MainLoop()
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address("127.0.0.1")
        self.server.set_service(str(args.port))
        self.server.connect("client-connected", self._on_client_connected)
        self.pool = self.server.get_session_pool()
        self.pool.connect("session-removed", self._on_session_removed)

        self.feeder: FileFeeder | None = None
        factory = GstRtspServer.RTSPMediaFactory()
        if args.source == "file":
            self.feeder = FileFeeder(args.file)
            factory.set_launch(FILE_MEDIA_LAUNCH)
        else:
            factory.set_launch(test_launch(args))
        factory.set_shared(True)
        factory.connect("media-configure", self._on_media_configure)
        if args.user is not None:
            self._setup_auth(factory, args.user, args.password)
        self.server.get_mount_points().add_factory(args.mount, factory)

    def _setup_auth(
        self, factory: GstRtspServer.RTSPMediaFactory, user: str, password: str
    ) -> None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", user)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        self.server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(user, "media.factory.access", True)
        permissions.add_permission_for_role(user, "media.factory.construct", True)
        factory.set_permissions(permissions)

    # -- signal handlers (all on the default main context) -------------------------------

    def _on_client_connected(
        self, _server: GstRtspServer.RTSPServer, client: GstRtspServer.RTSPClient
    ) -> None:
        self.clients += 1
        self.clients_total += 1
        client.connect("closed", self._on_client_closed)
        client.connect("new-session", self._on_new_session)
        client.connect("describe-request", self._on_request, "describe")
        client.connect("play-request", self._on_request, "play")
        client.connect("teardown-request", self._on_request, "teardown")
        emit("client-connected", clients=self.clients, clients_total=self.clients_total)

    def _on_client_closed(self, client: GstRtspServer.RTSPClient) -> None:
        self.clients -= 1
        emit("client-closed", clients=self.clients)
        # A client that went away without TEARDOWN would leave its session in the pool until
        # the session timeout (60 s), though its media is gone: end it with the connection.
        for session in self._client_sessions.pop(client, []):
            self.pool.remove(session)

    def _on_request(self, _client: GstRtspServer.RTSPClient, _ctx: Any, name: str) -> None:
        emit(name, clients=self.clients)

    def _on_new_session(
        self, client: GstRtspServer.RTSPClient, session: GstRtspServer.RTSPSession
    ) -> None:
        self.sessions_total += 1
        self._client_sessions.setdefault(client, []).append(session)
        emit(
            "session-new",
            sessions=self.pool.get_n_sessions(),
            sessions_total=self.sessions_total,
        )

    def _on_session_removed(
        self, pool: GstRtspServer.RTSPSessionPool, _session: GstRtspServer.RTSPSession
    ) -> None:
        # Emitted after the pool dropped the session.
        emit("session-removed", sessions=pool.get_n_sessions())

    def _on_media_configure(
        self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia
    ) -> None:
        self.medias_total += 1
        media.connect("unprepared", self._on_media_unprepared)
        if self.feeder is not None:
            self.feeder.attach(media.get_element().get_by_name("src"))
        emit("media-configured", medias_total=self.medias_total)

    def _on_media_unprepared(self, media: GstRtspServer.RTSPMedia) -> None:
        if self.feeder is not None:
            with self.feeder.lock:
                if self.feeder.appsrc is media.get_element().get_by_name("src"):
                    self.feeder.appsrc = None
        emit("media-unprepared")

    # -- lifecycle ------------------------------------------------------------------------

    def _cleanup_sessions(self) -> bool:
        self.pool.cleanup()
        return True

    def _shutdown(self) -> bool:
        # Close every client connection, so clients see the server go away.
        self.server.client_filter(lambda *_: GstRtspServer.RTSPFilterResult.REMOVE)
        self.loop.quit()
        return False

    def _on_stdin(self, fd: int, _condition: GLib.IOCondition) -> bool:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if data:
            return True
        self._shutdown()
        return False

    def run(self) -> int:
        if self.feeder is not None:
            try:
                self.feeder.start()
            except RuntimeError as exc:
                emit("error", message=str(exc))
                return 1
        source_id = self.server.attach(None)
        if source_id == 0:
            emit("error", message=f"cannot listen on 127.0.0.1:{self.args.port}")
            return 1
        GLib.timeout_add_seconds(1, self._cleanup_sessions)
        for signum in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, self._shutdown)
        if self.args.exit_on_stdin_eof:
            GLib.io_add_watch(
                sys.stdin.fileno(),
                GLib.PRIORITY_DEFAULT,
                GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
                self._on_stdin,
            )
        # attach() has bound and is listening: connections queue until the loop runs.
        emit("ready", port=self.server.get_bound_port(), mount=self.args.mount)
        self.loop.run()
        if self.feeder is not None:
            self.feeder.stop()
        emit("stopped")
        return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)
    missing = [
        f"{name} ({package})"
        for name, package in REQUIRED_ELEMENTS.items()
        if Gst.ElementFactory.find(name) is None
    ]
    if missing:
        emit("error", message=f"missing GStreamer elements: {', '.join(missing)}")
        return 2
    if args.check:
        emit("ok", gstreamer=Gst.version_string())
        return 0
    return Server(args).run()


if __name__ == "__main__":
    sys.exit(main())
