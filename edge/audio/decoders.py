"""Compressed audio from clients, decoded at the edge into the 16 kHz s16le PCM the pipeline takes.

One `StreamDecoder` per session, fed frame by frame as they arrive: the actors behind the edge never see
anything but PCM. The containers are parsed here, incrementally and in bounded memory (an Ogg page is at most
64 KiB; a WebM element over `MAX_ELEMENT` is refused, and uninteresting ones are skipped without being held);
each Opus packet is then decoded by FFmpeg's decoder through PyAV and resampled to 16 kHz mono (or, for a
multichannel session, 16 kHz with its channels kept, interleaved). No thread and no
blocking read: a frame is decoded when it arrives, so nothing waits for FFmpeg's probing, and a malformed stream
is an `AudioFormatError` for that session alone.

Formats: `ogg_opus` (Ogg-encapsulated Opus: Firefox's and Safari's `MediaRecorder`, `opusenc`, ffmpeg `-c:a
libopus x.ogg`), `webm_opus` (WebM/Matroska with an `A_OPUS` track: Chrome's and Edge's `MediaRecorder`), `opus`
(each message one raw Opus packet, 48 kHz), `mulaw` (G.711 µ-law, at the client's rate) and, for vendor
protocols that send "a file", WAV (RIFF PCM 8/16/24/32-bit or float; channels mixed down, as the package says),
sniffed with Ogg and WebM from the first bytes (`SniffingDecoder`).
"""

from __future__ import annotations

import struct

import av
import numpy as np

from actors.runtime.pcm import to_int16
from edge.audio.pcm import MULAW, mixdown

RATE = 16000  # what every decoder but mulaw's outputs: s16le mono at this rate
MAX_ELEMENT = 1 << 20  # a WebM element we must hold whole (a block, the track header) larger than this: refused
MAX_PENDING = 1 << 17  # bytes buffered while waiting for the rest of a header or page
MAX_BAD_PACKETS = 50  # consecutive undecodable Opus packets before the stream counts as broken

COMPRESSED = ("ogg_opus", "webm_opus")  # on Tolk's `start` (raw `opus` packets: for protocols that define them)


class AudioFormatError(ValueError):
    """The client's audio is not what it said it would send (or is damaged beyond skipping)."""


class UnsupportedAudio(AudioFormatError):
    """A file of a kind not decoded here (the client said "a file", and it is neither WAV, Ogg nor WebM)."""


def _opus_head(channels: int = 1) -> bytes:
    """A minimal OpusHead (RFC 7845): what a raw-packet stream lacks."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, 48000, 0, 0)


# FFmpeg's layout for a channel count (interleaved WAV samples are handed to the resampler as these).
LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


class _Pcm16k:
    """Frames of any rate/layout/format → s16le 16 kHz bytes: mono (the channels mixed down), or, for a
    multichannel session (`channels` > 1), exactly that many channels interleaved in the stream's own order."""

    def __init__(self, channels: int = 1) -> None:
        self.channels = channels
        self.resampler: av.AudioResampler | None = None
        if channels == 1:
            self.resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)

    def frames(self, frames: list[av.AudioFrame]) -> bytes:
        out = bytearray()
        for frame in frames:
            if self.resampler is None:  # multichannel: the stream's layout kept, once it is known to fit
                found = len(frame.layout.channels)
                if found != self.channels:
                    raise AudioFormatError(f"the audio has {found} channel(s), the session said {self.channels}")
                self.resampler = av.AudioResampler(format="s16", layout=frame.layout, rate=RATE)
            for f in self.resampler.resample(frame):
                out += f.to_ndarray().reshape(-1).astype("<i2", copy=False).tobytes()
        return bytes(out)

    def samples(self, samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
        """int16 samples at `rate`, `channels` interleaved."""
        if len(samples) == 0:
            return b""
        if rate == RATE and channels == self.channels:
            return samples.astype("<i2", copy=False).tobytes()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=LAYOUTS[channels])
        frame.sample_rate = rate
        return self.frames([frame])


class _Opus:
    """Opus packets → PCM, through FFmpeg's decoder."""

    def __init__(self, head: bytes, channels: int = 1) -> None:
        if len(head) < 19 or not head.startswith(b"OpusHead"):
            raise AudioFormatError("not an Opus stream (no OpusHead)")
        found = head[9]
        if not 1 <= found <= 8:
            raise AudioFormatError(f"Opus stream with {found} channels")
        if channels > 1 and channels != found:
            raise AudioFormatError(f"the Opus stream has {found} channel(s), the session said {channels}")
        self.ctx = av.CodecContext.create("opus", "r")
        self.ctx.extradata = bytes(head)
        self.pcm = _Pcm16k(channels)  # (FFmpeg's decoder drops the OpusHead's pre-skip itself)
        self.bad = 0

    def packet(self, data: bytes) -> bytes:
        if not data:
            return b""
        try:
            frames = self.ctx.decode(av.Packet(data))
            self.bad = 0
        except (av.error.FFmpegError, ValueError) as exc:
            # One damaged packet is skipped (as a player would); a stream of nothing else is refused.
            self.bad += 1
            if self.bad > MAX_BAD_PACKETS:
                raise AudioFormatError(f"undecodable Opus packets ({exc.__class__.__name__})") from None
            return b""
        return self.pcm.frames([f for f in frames if isinstance(f, av.AudioFrame)])


class StreamDecoder:
    """feed(bytes) → PCM (s16le 16 kHz: mono, or `channels` interleaved) decoded so far; never holds more than its
    bounds."""

    name = ""
    channels = 1  # > 1: a multichannel session's, which keeps them (and refuses audio with another count)

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError


class RawOpusDecoder(StreamDecoder):
    """Each message is one Opus packet (48 kHz, mono or stereo, as the packet's TOC says)."""

    name = "opus"

    def __init__(self) -> None:
        self.opus = _Opus(_opus_head(1))

    def feed(self, data: bytes) -> bytes:
        return self.opus.packet(data)


class OggOpusDecoder(StreamDecoder):
    """Ogg pages (RFC 3533) of the first logical stream, which must be Opus (RFC 7845)."""

    name = "ogg_opus"

    def __init__(self, channels: int = 1) -> None:
        self.channels = channels
        self.buf = bytearray()
        self.serial: int | None = None
        self.packet = bytearray()  # a packet continued across pages
        self.opus: _Opus | None = None
        self.headers = 0

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while len(self.buf) >= 27:
            if self.buf[:4] != b"OggS":
                raise AudioFormatError("not an Ogg stream (expected an 'OggS' page)")
            if self.buf[4] != 0:
                raise AudioFormatError(f"Ogg version {self.buf[4]}")
            nsegs = self.buf[26]
            if len(self.buf) < 27 + nsegs:
                break
            lacing = self.buf[27:27 + nsegs]
            size = 27 + nsegs + sum(lacing)
            if len(self.buf) < size:
                break
            serial = struct.unpack_from("<I", self.buf, 14)[0]
            body = memoryview(bytes(self.buf[27 + nsegs:size]))
            continued = bool(self.buf[5] & 1)
            del self.buf[:size]
            if self.serial is None:
                self.serial = serial
            if serial != self.serial:
                continue  # another logical stream (a chained or multiplexed file): not ours
            if not continued:
                self.packet.clear()
            pos = 0
            for lace in lacing:
                self.packet += body[pos:pos + lace]
                pos += lace
                if len(self.packet) > MAX_ELEMENT:
                    raise AudioFormatError("Ogg packet too large")
                if lace < 255:
                    out += self._packet(bytes(self.packet))
                    self.packet.clear()
        return bytes(out)

    def _packet(self, data: bytes) -> bytes:
        if self.opus is None:
            if not data.startswith(b"OpusHead"):
                raise AudioFormatError("the Ogg stream is not Opus (ogg_opus needs an OpusHead first)")
            self.opus = _Opus(data, self.channels)
            return b""
        if self.headers == 0:  # OpusTags
            self.headers = 1
            if data.startswith(b"OpusTags"):
                return b""
        return self.opus.packet(data)


# Matroska / WebM element ids
_EBML, _SEGMENT, _CLUSTER, _TRACKS, _TRACK_ENTRY, _BLOCK_GROUP = (0x1A45DFA3, 0x18538067, 0x1F43B675, 0x1654AE6B,
                                                                   0xAE, 0xA0)
_SIMPLE_BLOCK, _BLOCK, _TRACK_NUMBER, _CODEC_ID, _CODEC_PRIVATE, _TRACK_TYPE = 0xA3, 0xA1, 0xD7, 0x86, 0x63A2, 0x83
_MASTERS = {_SEGMENT, _CLUSTER, _TRACKS, _TRACK_ENTRY, _BLOCK_GROUP}  # entered (their children follow inline)
_KEEP = {_SIMPLE_BLOCK, _BLOCK, _TRACK_NUMBER, _CODEC_ID, _CODEC_PRIVATE, _TRACK_TYPE}  # read whole


def _vint(buf: bytearray | bytes, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `pos`: (value, length), None if incomplete; -1 = unknown size."""
    if pos >= len(buf):
        return None
    first = buf[pos]
    if first == 0:
        raise AudioFormatError("not a WebM stream (invalid EBML number)")
    length = 8 - first.bit_length() + 1
    if pos + length > len(buf):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for b in buf[pos + 1:pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return -1, length
    return value, length


class WebmOpusDecoder(StreamDecoder):
    """A WebM (Matroska) stream as `MediaRecorder` writes it: Segment and Clusters of unknown size, SimpleBlocks
    of Opus. The first `A_OPUS` track is decoded; other tracks are skipped."""

    name = "webm_opus"

    def __init__(self, channels: int = 1) -> None:
        self.channels = channels
        self.buf = bytearray()
        self.skip = 0  # bytes of an uninteresting element still to skip
        self.started = False
        self.track: int | None = None  # the Opus track's number
        self.entry: dict[int, bytes] = {}  # the current TrackEntry's fields
        self.opus: _Opus | None = None

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while self.buf:
            if self.skip:
                n = min(self.skip, len(self.buf))
                del self.buf[:n]
                self.skip -= n
                continue
            if not self.started:
                if len(self.buf) < 4:
                    break
                if bytes(self.buf[:4]) != b"\x1a\x45\xdf\xa3":
                    raise AudioFormatError("not a WebM stream (no EBML header)")
                self.started = True
            head = _vint(self.buf, 0, keep_marker=True)
            if head is None:
                break
            eid, idlen = head
            size_v = _vint(self.buf, idlen, keep_marker=False)
            if size_v is None:
                break
            size, sizelen = size_v
            header = idlen + sizelen
            if eid in _MASTERS:
                if eid == _TRACK_ENTRY:
                    self._end_entry()
                del self.buf[:header]  # enter: its children are parsed as they come
                continue
            if size < 0:
                raise AudioFormatError(f"WebM element {eid:#x} of unknown size")
            if eid not in _KEEP:
                del self.buf[:header]
                self.skip = size
                continue
            if size > MAX_ELEMENT:
                raise AudioFormatError(f"WebM element of {size} bytes is too large")
            if len(self.buf) < header + size:
                break
            payload = bytes(self.buf[header:header + size])
            del self.buf[:header + size]
            out += self._element(eid, payload)
        if len(self.buf) > MAX_ELEMENT + 64:
            raise AudioFormatError("WebM element too large")
        return bytes(out)

    def _end_entry(self) -> None:
        """A TrackEntry's fields arrive inline: settled when the next entry (or the first block) comes."""
        entry, self.entry = self.entry, {}
        if self.track is not None or _TRACK_NUMBER not in entry:
            return
        if entry.get(_CODEC_ID, b"").rstrip(b"\0") == b"A_OPUS":
            self.track = int.from_bytes(entry[_TRACK_NUMBER], "big")
            self.opus = _Opus(entry.get(_CODEC_PRIVATE) or _opus_head(1), self.channels)

    def _element(self, eid: int, payload: bytes) -> bytes:
        if eid in (_TRACK_NUMBER, _CODEC_ID, _CODEC_PRIVATE, _TRACK_TYPE):
            if _TRACK_NUMBER in self.entry and eid == _TRACK_NUMBER:
                self._end_entry()
            self.entry[eid] = payload
            return b""
        # A block: track number (vint), 16-bit relative timecode, flags, then the frame(s).
        self._end_entry()
        if self.opus is None:
            raise AudioFormatError("the WebM stream has no Opus audio track (webm_opus needs codec A_OPUS)")
        tv = _vint(payload, 0, keep_marker=False)
        if tv is None or len(payload) < tv[1] + 3:
            raise AudioFormatError("truncated WebM block")
        track, n = tv
        if track != self.track:
            return b""
        flags = payload[n + 2]
        if flags & 0x06:
            raise AudioFormatError("laced WebM blocks are not supported")
        return self.opus.packet(payload[n + 3:])


class MulawDecoder(StreamDecoder):
    """G.711 µ-law bytes → s16le at the same rate (the one decoder that keeps the client's rate)."""

    name = "mulaw"

    def feed(self, data: bytes) -> bytes:
        return MULAW[np.frombuffer(data, np.uint8)].astype("<i2", copy=False).tobytes()


class WavDecoder(StreamDecoder):
    """A streamed RIFF/WAVE file: PCM 8/16/24/32-bit or 32/64-bit float, any channel count (mixed down)."""

    name = "wav"

    def __init__(self, channels: int = 1) -> None:
        self.channels = channels
        self.buf = bytearray()
        self.fmt: tuple[int, int, int, int] | None = None  # (format tag, channels, rate, bits)
        self.data_left: int | None = None
        self.skip = 0
        self.pcm = _Pcm16k(channels)

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        if self.data_left is None:
            if not self._header():
                if len(self.buf) > MAX_PENDING:
                    raise AudioFormatError("WAV header too large")
                return b""
        assert self.fmt is not None and self.data_left is not None
        tag, channels, rate, bits = self.fmt
        block = channels * bits // 8
        n = min(len(self.buf), self.data_left) // block * block
        raw, self.data_left = bytes(self.buf[:n]), self.data_left - n
        del self.buf[:n]
        if self.data_left < block:
            self.buf.clear()  # trailing chunks (LIST, …) after the data
        if tag == 3:
            ints = to_int16(np.frombuffer(raw, "<f4" if bits == 32 else "<f8"))
        elif bits == 8:
            ints = (np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8
        elif bits == 16:
            ints = np.frombuffer(raw, "<i2")
        elif bits == 24:
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
            ints = (b[:, 2].astype(np.int8).astype(np.int16) << 8) | b[:, 1]
        else:
            ints = (np.frombuffer(raw, "<i4") >> 16).astype(np.int16)
        if self.channels == 1:
            ints = mixdown(ints, channels)
            channels = 1
        return self.pcm.samples(np.ascontiguousarray(ints, dtype=np.int16), rate, channels)

    def _header(self) -> bool:
        if len(self.buf) < 12:
            return False
        if self.buf[:4] != b"RIFF" or self.buf[8:12] != b"WAVE":
            raise AudioFormatError("not a WAV file")
        pos = 12
        while len(self.buf) >= pos + 8:
            cid, size = bytes(self.buf[pos:pos + 4]), struct.unpack_from("<I", self.buf, pos + 4)[0]
            if cid == b"data":
                if self.fmt is None:
                    raise AudioFormatError("WAV data before its fmt chunk")
                del self.buf[:pos + 8]
                self.data_left = size if size and size != 0xFFFFFFFF else 1 << 62  # streamed WAVs leave it 0/-1
                return True
            if len(self.buf) < pos + 8 + size:
                return False
            if cid == b"fmt ":
                tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", self.buf, pos + 8)
                if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
                    tag = struct.unpack_from("<H", self.buf, pos + 8 + 24)[0]
                if (tag, bits) not in {(1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)} or not channels \
                        or not 8000 <= rate <= 192000:
                    raise AudioFormatError(f"unsupported WAV format (tag {tag}, {bits} bits, {rate} Hz)")
                if self.channels > 1 and channels != self.channels:
                    raise AudioFormatError(f"the WAV file has {channels} channel(s), the session said "
                                           f"{self.channels}")
                if channels > len(LAYOUTS) and self.channels > 1:
                    raise AudioFormatError(f"WAV with {channels} channels")
                self.fmt = (tag, channels, rate, bits)
            pos += 8 + size + (size & 1)
        return False


class SniffingDecoder(StreamDecoder):
    """"A file" of unknown type: WAV, Ogg Opus or WebM Opus, told apart by the first bytes."""

    name = "file"

    def __init__(self, channels: int = 1) -> None:
        self.channels = channels
        self.inner: StreamDecoder | None = None
        self.head = bytearray()

    def feed(self, data: bytes) -> bytes:
        if self.inner is None:
            self.head += data
            if len(self.head) < 4:
                return b""
            magic = bytes(self.head[:4])
            if magic == b"RIFF":
                self.inner = WavDecoder(self.channels)
            elif magic == b"OggS":
                self.inner = OggOpusDecoder(self.channels)
            elif magic == b"\x1a\x45\xdf\xa3":
                self.inner = WebmOpusDecoder(self.channels)
            else:
                raise UnsupportedAudio("audio files must be WAV, Ogg Opus or WebM Opus")
            data, self.head = bytes(self.head), bytearray()
        return self.inner.feed(data)


def container_channels(head: bytes) -> int | None:
    """The channel count a file's header declares (a WAV's fmt chunk, an Ogg Opus stream's OpusHead), from the
    file's first bytes however the client cut them into messages: None while more bytes could still tell (the
    caller buffers and asks again; never once `MAX_PENDING` bytes are in, so what it holds is bounded), else the
    count, 0 where the file does not say (another container, WebM, a count of 0, a header over the bound)."""
    magic = head[:4]
    found = _wav_channels(head) if b"RIFF".startswith(magic) else _ogg_channels(head) if b"OggS".startswith(magic) \
        else 0
    if found is None and len(head) >= MAX_PENDING:
        return 0
    return found


def _wav_channels(head: bytes) -> int | None:
    if len(head) < 12:
        return None
    if head[8:12] != b"WAVE":
        return 0
    pos = 12  # the chunks, walked as WavDecoder does: fmt need not come first (JUNK, LIST, … may precede it)
    while len(head) >= pos + 8:
        cid, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"fmt ":
            return int.from_bytes(head[pos + 10:pos + 12], "little") if len(head) >= pos + 12 else None
        if cid == b"data":
            return 0  # data before any fmt: WavDecoder refuses it
        pos += 8 + size + (size & 1)
    return None


def _ogg_channels(head: bytes) -> int | None:
    """The first page's first packet is the OpusHead (RFC 7845), its channel count at byte 9."""
    if len(head) < 27:
        return None
    at = 27 + head[26]
    if len(head) < at + 10:
        return None
    return head[at + 9] if head[at:at + 8] == b"OpusHead" else 0


def decoder_for(encoding: str, channels: int = 1) -> StreamDecoder:
    """The decoder of a compressed encoding name (`COMPRESSED`, `mulaw`, `file`); `channels` > 1: a multichannel
    session's, whose output keeps that many channels interleaved (µ-law samples are expanded one by one, so
    interleaved stays interleaved; raw Opus packets are one channel's)."""
    match encoding:
        case "ogg_opus":
            return OggOpusDecoder(channels)
        case "webm_opus":
            return WebmOpusDecoder(channels)
        case "opus":
            return RawOpusDecoder()
        case "mulaw":
            return MulawDecoder()
        case "file":
            return SniffingDecoder(channels)
    raise ValueError(encoding)
