"""
What an uploaded file really is: a small table of magic numbers for the
common binary formats (images, PDF, archives, executables) and a test for
text, so that the attachment plugin can refuse a file whose bytes do not
match the media type it is declared as (or the one its name implies).

Only the first L{HEAD} bytes are looked at. The check is deliberately
narrow: a media type this module does not know is never refused, since a
missing entry must not break an upload; a known one must have the
signature that type always starts with.
"""

from __future__ import annotations

from collections.abc import Callable

HEAD = 8 * 1024


def _riff(kind: bytes):
    return lambda head: head[:4] == b"RIFF" and head[8:12] == kind


def _prefix(*prefixes: bytes):
    return lambda head: head.startswith(prefixes)


def _at(offset: int, marker: bytes):
    return lambda head: head[offset:offset + len(marker)] == marker


def _mp4(head: bytes) -> bool:
    # ISO base media: a box size, then "ftyp" (MP4, QuickTime, HEIF/AVIF).
    return head[4:8] == b"ftyp"


def _avif(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis")


def _heic(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis")


def _mp3(head: bytes) -> bool:
    # An ID3 tag, or an MPEG audio frame sync (11 bits set, layer III).
    return head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE6 == 0xE2)


_ZIP = _prefix(b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_OLE = _prefix(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")  # legacy Office documents

# (name shown in errors, test, the media types whose files always pass it)
SIGNATURES: tuple[tuple[str, Callable[[bytes], bool], frozenset[str]], ...] = (
    ("PNG image", _prefix(b"\x89PNG\r\n\x1a\n"), frozenset({"image/png", "image/apng"})),
    ("JPEG image", _prefix(b"\xff\xd8\xff"), frozenset({"image/jpeg", "image/pjpeg", "image/jpg"})),
    ("GIF image", _prefix(b"GIF87a", b"GIF89a"), frozenset({"image/gif"})),
    ("WebP image", _riff(b"WEBP"), frozenset({"image/webp"})),
    ("BMP image", lambda h: h[:2] == b"BM" and len(h) >= 14 and h[6:10] == b"\0\0\0\0",
     frozenset({"image/bmp", "image/x-ms-bmp"})),
    ("TIFF image", _prefix(b"II*\x00", b"MM\x00*"), frozenset({"image/tiff"})),
    ("icon", _prefix(b"\x00\x00\x01\x00"), frozenset({"image/x-icon", "image/vnd.microsoft.icon"})),
    ("AVIF image", _avif, frozenset({"image/avif"})),
    ("HEIF image", _heic, frozenset({"image/heic", "image/heif"})),
    ("PDF document", _prefix(b"%PDF-"), frozenset({"application/pdf"})),
    ("ZIP archive", _ZIP, frozenset({
        "application/zip", "application/x-zip-compressed", "application/java-archive",
        "application/epub+zip", "application/vnd.android.package-archive",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text", "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
    })),
    ("OLE2 (legacy Office) document", _OLE, frozenset({
        "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
    })),
    ("gzip data", _prefix(b"\x1f\x8b"), frozenset({"application/gzip", "application/x-gzip"})),
    ("bzip2 data", _prefix(b"BZh"), frozenset({"application/x-bzip2"})),
    ("xz data", _prefix(b"\xfd7zXZ\x00"), frozenset({"application/x-xz"})),
    ("7z archive", _prefix(b"7z\xbc\xaf\x27\x1c"), frozenset({"application/x-7z-compressed"})),
    ("zstd data", _prefix(b"\x28\xb5\x2f\xfd"), frozenset({"application/zstd"})),
    ("tar archive", _at(257, b"ustar"), frozenset({"application/x-tar"})),
    ("WebAssembly module", _prefix(b"\x00asm"), frozenset({"application/wasm"})),
    ("SQLite database", _prefix(b"SQLite format 3\x00"), frozenset({"application/vnd.sqlite3", "application/x-sqlite3"})),
    ("WAV audio", _riff(b"WAVE"), frozenset({"audio/wav", "audio/x-wav", "audio/wave"})),
    ("Ogg media", _prefix(b"OggS"), frozenset({"audio/ogg", "video/ogg", "application/ogg", "audio/opus"})),
    ("FLAC audio", _prefix(b"fLaC"), frozenset({"audio/flac", "audio/x-flac"})),
    ("MP3 audio", _mp3, frozenset({"audio/mpeg", "audio/mp3"})),
    ("MP4 media", _mp4, frozenset({"video/mp4", "audio/mp4", "video/quicktime", "audio/x-m4a", "video/x-m4v"})),
    ("WebM/Matroska media", _prefix(b"\x1a\x45\xdf\xa3"), frozenset({"video/webm", "audio/webm", "video/x-matroska"})),
    ("ELF executable", _prefix(b"\x7fELF"), frozenset({"application/x-executable", "application/x-elf", "application/x-sharedlib"})),
    ("Windows executable", _prefix(b"MZ"), frozenset({"application/x-msdownload", "application/vnd.microsoft.portable-executable", "application/x-dosexec"})),
)

# Every media type with a signature in the table.
_SIGNED: dict[str, str] = {}
for _name, _test, _types in SIGNATURES:
    for _t in _types:
        _SIGNED[_t] = _name

# Types whose files are text (besides text/*).
TEXT_TYPES = frozenset({
    "application/json", "application/geojson", "application/geo+json", "application/ld+json",
    "application/manifest+json", "application/schema+json", "application/xml", "application/javascript",
    "application/x-javascript", "application/ecmascript", "application/x-sh", "application/x-pem-file",
    "application/toml", "application/yaml", "application/x-yaml", "image/svg+xml", "application/xhtml+xml",
    "application/rss+xml", "application/atom+xml", "application/sql", "application/csv",
})
_JSON_TYPES = frozenset({
    "application/json", "application/geojson", "application/geo+json", "application/ld+json",
    "application/manifest+json", "application/schema+json",
})
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def detect(head: bytes) -> str | None:
    """The name of the binary format C{head} starts like, or C{None}."""
    for name, test, _types in SIGNATURES:
        if test(head):
            return name
    return None


def is_textual(mimetype: str) -> bool:
    return mimetype.startswith("text/") or mimetype in TEXT_TYPES or mimetype.endswith(("+json", "+xml"))


def looks_like_text(head: bytes, complete: bool) -> bool:
    """
    No NUL byte, and UTF-8 (or UTF-16 with its byte order mark). C{complete}
    says C{head} is the whole file: otherwise a character cut at its end
    is not an error. Latin-1 text outside ASCII fails the UTF-8 test and is
    accepted too as long as it holds no control characters but whitespace.
    """
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True  # UTF-16 text has NULs
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        if not complete and e.start >= len(head) - 3 and e.reason == "unexpected end of data":
            return True
    controls = set(range(0, 32)) - {9, 10, 12, 13, 27}
    return not any(b in controls for b in head)


def mismatch(mimetype: str, head: bytes, complete: bool) -> str | None:
    """
    Why bytes starting with C{head} cannot be a C{mimetype} file, or
    C{None} when they can (or when this module cannot tell).
    """
    mimetype = mimetype.lower()
    found = detect(head)
    expected = _SIGNED.get(mimetype)
    if expected is not None:
        for _name, test, types in SIGNATURES:
            if mimetype in types and test(head):
                return None
        what = found or ("text" if head and looks_like_text(head, complete) else "data of another type")
        if not head:
            what = "empty"
        return f"the content is {what}, not a {expected} ({mimetype})"
    if is_textual(mimetype):
        if found is not None and found not in ("MP3 audio", "BMP image", "Windows executable", "bzip2 data"):
            # (Those few signatures are ASCII letters a text may start with.)
            return f"the content is a {found}, not text ({mimetype})"
        if not looks_like_text(head, complete):
            return f"the content is binary data, not text ({mimetype})"
        if mimetype in _JSON_TYPES:
            start = head
            for bom in _BOMS:
                if start.startswith(bom):
                    start = start[len(bom):]
                    break
            start = start.lstrip(b" \t\r\n")
            if start and start[:1] not in b'{["-0123456789tfn':
                return f"the content is not JSON ({mimetype})"
    return None
