"""Reading and converting one input of ``fastft shard`` (runs in the worker processes): its bytes (a file, or a
positioned read of an archive), decoded within a pixel limit, normalised to 8-bit RGB, resized and re-encoded as the
store's JPEG — or rejected with the reason, never an exception that ends the run."""
from __future__ import annotations

import io
import os
import re
import stat

import numpy as np

from ..store import parse_resize

MAX_PIXELS = 200_000_000
"""The most pixels fastft decodes for one image (e.g. 20000×10000, at most 800 MB at 4 bytes a pixel). A JPEG is
decoded at 1/2, 1/4 or 1/8 scale (in the DCT, by ``Image.draft``) when that is enough for the store's size or needed to
stay within the limit, so it may declare up to 64× more (every JPEG: 65535×65535 at 1/8 is 67 Mpx). PIL's own check
(``Image.MAX_IMAGE_PIXELS``, made at open and for some formats' frames and tiles) is set to this limit; an image beyond
it is rejected as too large before anything is allocated."""
_JPEG_MAGIC = b"\xff\xd8\xff"
_WHITE = (255, 255, 255)
# inputs by kind in the manifest: PIL mode -> name (a non-JPEG adds its format: "png-rgba")
_KINDS = {"RGB": "rgb", "L": "grayscale", "CMYK": "cmyk", "RGBA": "rgba", "LA": "grayscale-alpha", "P": "palette",
          "PA": "palette-alpha", "1": "bilevel", "I;16": "grayscale-16bit", "I;16L": "grayscale-16bit",
          "I;16B": "grayscale-16bit", "I;16N": "grayscale-16bit", "I": "grayscale-32bit", "F": "grayscale-float",
          "YCbCr": "ycbcr", "RGBX": "rgb"}


class _Rejected(Exception):
    """An input that cannot be written; the message is its reason in ``rejected.csv``."""


def _process(args) -> tuple[bytes | None, str]:
    """Decode, normalise to RGB, resize and re-encode one input. Returns (jpeg, kind) or (None, reason).

    Never raises: whatever one input does to a decoder (a lying header, a decompression bomb, a bug in a PIL plugin)
    rejects that input, with the exception as its reason, and the run goes on. ``args`` may carry a reason found by
    the scan (a file outside any class folder, an unlabelled file in a flat val/): that input is rejected unread."""
    path, member, resize, quality, *pre = args
    if pre and pre[0]:
        return None, pre[0]
    import warnings

    from PIL import Image

    fmt = "image"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "corrupt EXIF" & co. from thousands of inputs would bury the progress bar
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit is a rejection, not a warning
        try:
            raw = _read_input(path, member)
            im = _open(raw)
            fmt = im.format or fmt
            return _convert(im, raw, resize, quality)
        except _Rejected as e:
            return None, str(e)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # raised by a plugin, e.g. a GIF frame
            return None, f"too large ({_bomb_pixels(e)}; fastft decodes at most {MAX_PIXELS / 1e6:.0f} Mpx)"
        except MemoryError:
            return None, f"undecodable {fmt} (out of memory)"
        except Exception as e:  # noqa: BLE001 -- any fault of one input is that input's rejection, never the run's end
            return None, f"undecodable {fmt} ({type(e).__name__}: {e})"


def _read_input(path: str, member) -> bytes:
    """The bytes of one input, or :class:`_Rejected` (a dangling symlink, a FIFO or device, an unreadable file)."""
    if member:
        try:
            raw = _read_member(path, *member)
        except OSError as e:
            raise _Rejected(f"unreadable ({e.strerror or e})") from None
    else:
        try:  # O_NONBLOCK: opening a FIFO that nobody writes would otherwise block the worker forever
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            if os.path.islink(path):
                raise _Rejected(f"dangling symlink (to {os.readlink(path)})") from None
            raise _Rejected("unreadable (No such file: removed after the scan?)") from None
        except OSError as e:
            raise _Rejected(f"unreadable ({e.strerror or e})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                what = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
                raise _Rejected(f"not a regular file ({what})")
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read()
        except OSError as e:
            raise _Rejected(f"unreadable ({e.strerror or e})") from None
        finally:
            os.close(fd)
    if not raw:
        raise _Rejected("0-byte file")
    return raw


def _open(raw: bytes):
    """PIL's view of ``raw`` (only the header is read), with fastft's pixel limit as PIL's."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS * (64 if raw[:3] == _JPEG_MAGIC else 1)  # a JPEG is decoded at >= 1/8 scale
    try:
        return Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        raise _Rejected(f"not an image ({_sniff(raw)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _Rejected(f"too large ({_bomb_pixels(e)}; fastft decodes at most {MAX_PIXELS / 1e6:.0f} Mpx)") from None


def _bomb_pixels(e: Exception) -> str:
    m = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(m.group(1)) / 1e6:,.0f} Mpx" if m else str(e)


def _convert(im, raw: bytes, resize: str, quality: int) -> tuple[bytes, str]:
    """The store's JPEG of the opened image ``im`` (see :func:`_to_rgb` for what each mode becomes) and its kind."""
    from PIL import Image

    fmt, mode = im.format, im.mode
    kind = "palette-alpha" if mode == "P" and "transparency" in im.info else _KINDS.get(mode, mode.lower())
    if fmt != "JPEG":
        kind = f"{fmt.lower()}-{kind}"
    if not im.width or not im.height:
        raise _Rejected(f"empty image ({im.width}×{im.height} px)")
    how, w, h = parse_resize(resize)
    declared = im.size
    if fmt in ("JPEG", "MPO"):
        target = _target_size(im.size, how, w, h) if how != "none" else im.size
        fit = _jpeg_fit(im.size)  # draft picks the greatest reduction that still covers the size asked for
        im.draft("RGB" if mode == "RGB" else None, (min(target[0], fit[0]), min(target[1], fit[1])))
    if im.width * im.height > MAX_PIXELS:
        raise _Rejected(f"too large ({declared[0]}×{declared[1]} px; fastft decodes at most {MAX_PIXELS / 1e6:.0f} Mpx)")
    _check_plausible(im, declared, len(raw))
    im.load()
    if how == "none" and fmt == "JPEG" and mode == "RGB" and im.size == declared:
        return raw, kind  # keep the original bytes
    if _has_alpha(im) and im.mode not in ("RGBA", "LA"):
        im = im.convert("RGBA")  # before resampling, so that the alpha is resampled with the colours
    elif im.mode in ("1", "P", "PA"):
        im = im.convert("L" if im.mode == "1" else "RGB")  # PIL resamples these only by nearest neighbour
    if how != "none":
        size = _target_size(im.size, how, w, h)
        if size[0] * size[1] > MAX_PIXELS or max(size) > 65500:  # 65535: JPEG's largest side
            raise _Rejected(f"too large after --resize {resize} ({size[0]}×{size[1]} px from {declared[0]}×{declared[1]})")
        if size != im.size:  # resampled in the input's own mode (16-bit, float, CMYK …): cheaper, and no early rounding
            im = im.resize(size, Image.BILINEAR)
    b = io.BytesIO()
    _to_rgb(im).save(b, "JPEG", quality=quality)
    return b.getvalue(), kind


def _jpeg_fit(size: tuple[int, int]) -> tuple[int, int]:
    """A JPEG's size at the least DCT reduction (1, 1/2, 1/4, 1/8) that keeps it within :data:`MAX_PIXELS`."""
    for k in (1, 2, 4, 8):
        w, h = -(-size[0] // k), -(-size[1] // k)
        if w * h <= MAX_PIXELS:
            break
    return w, h


def _has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)


def _to_rgb(im):
    """``im`` as 8-bit RGB, by pixel value:

    * RGB as is; L, 1 (0/255), P (its palette), YCbCr, RGBX by PIL; CMYK by PIL's conversion (as ILSVRC's 22 CMYK
      JPEGs need, see reliability.md), ICC profiles not applied;
    * 16-bit (I;16, I;16B, I;16L — PNG, TIFF) scaled 0..65535 → 0..255 (round(v / 257): mid-gray 32768 → 128; PIL's own
      conversion clips every value above 255 to white); I (32-bit integer, which is how PIL reads 16-bit PGM) is taken
      as 16-bit, clipped to 0..65535; F (32-bit float) as 0.0..1.0, the convention of float images, clipped (NaN → 0);
    * alpha (RGBA, LA, PA, a palette or L/RGB with a transparent colour) is composited on white: ILSVRC's images come
      from web pages, which show transparent parts on white, and the colour stored under alpha 0 is arbitrary (often
      black), so dropping alpha would show what the author hid.
    """
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I"):
        a = np.asarray(im).astype(np.int32)
        return Image.fromarray(((np.clip(a, 0, 65535) + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0)
        return Image.fromarray((np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), "L").convert("RGB")
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, _WHITE)
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    if mode in ("LAB", "HSV"):  # PIL's convert copies the bands as if they were RGB
        raise _Rejected(f"unsupported colour mode ({mode})")
    return im.convert("RGB")


def _check_plausible(im, declared: tuple[int, int], nbytes: int) -> None:
    """Reject a header that claims more pixels than the file can hold (a 2 KB BMP "of" 20000×15000 would otherwise
    be allocated first and found truncated after): raw pixel data needs at least a bit a pixel, and zlib (PNG)
    compresses at most 1032:1."""
    need = 0
    for t in im.tile:
        codec, (x0, y0, x1, y1), offset = t[0], t[1], t[2]  # (codec, extents, offset, args): a tuple in Pillow 10
        bits = max(0, x1 - x0) * max(0, y1 - y0)
        if codec == "raw":
            need = max(need, offset + bits // 8)
        elif codec == "zip":
            need = max(need, offset + bits // 8 // 1032)
    if need > nbytes:
        raise _Rejected(f"header claims more pixels than the file holds ({declared[0]}×{declared[1]} px in {nbytes:,} bytes)")


_ARCHIVES: dict[str, int] = {}  # per worker process: archive path -> open descriptor (positioned reads need no seek)


def _read_member(path: str, offset: int, size: int) -> bytes:
    if path not in _ARCHIVES:
        _ARCHIVES[path] = os.open(path, os.O_RDONLY)
    raw = os.pread(_ARCHIVES[path], size, offset)
    if len(raw) != size:
        raise OSError(f"archive ends after {len(raw)} of {size} bytes (truncated)")
    return raw


def _target_size(size, kind, w, h):
    if kind == "exact":
        return (w, h)
    if kind == "short":
        s = w / min(size)
        return (max(1, round(size[0] * s)), max(1, round(size[1] * s)))
    return size


def _sniff(raw: bytes) -> str:
    if raw[:2] == b"\x1f\x8b":
        return "gzip data"
    if raw.lstrip()[:1] == b"<":
        return "HTML/XML text"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in raw[:256]):
        return "text"
    return "unrecognised bytes"
