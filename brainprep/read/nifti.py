"""The one NIfTI reader of brainprep: every command decodes files here, and writes them here.

Every stage that reads voxels (``check``, ``show``, ``build-patches``, ``brainnet predict``, through
:func:`brainprep.read_case` and :func:`brainprep.read.case.read_case_arrays`) goes through
:func:`read_nifti_voxels`; stages that need only a header (the build plan, the ``check`` table) go
through :func:`read_nifti_header`. Both decode the header with nibabel's own header classes
(:func:`decode_nifti_header`), so the shape, dtype, affine (sform/qform choice), voxel offset and scaling
are nibabel's; the voxels themselves are a view of the inflated bytes, scaled by :func:`scale_voxels`
exactly as nibabel's ``get_fdata`` scales them. ``tests/test_nifti_decode.py`` holds the result bit for
bit equal to ``nib.load`` on every real file in ``../shared/data`` and on synthetic edge cases
(int16/uint8/float64, scl_slope/scl_inter, qform-only and sform-only, .nii and .nii.gz, multi-member
gzip, NIfTI-2).

Why not ``nib.load``: the build needs each file's sha256, its header and its voxels in the file's
dtype, and reads one case after another. Here the file is read once (hashed and inflated from the same
bytes), inflated by ISA-L in one pass into a buffer reused from case to case (:class:`ReadBuffers`), and
the voxels are viewed in place, never copied or converted as a whole. ``python
benchmarks/bench_nifti_read.py`` times the same work (hash, header, unscaled voxels, gzip CRC) both
ways in alternating rounds: nibabel reading through an ISA-L stream takes 1.3x as long on a synthetic
240x240x155x4 float32 case and 1.08x on the real BraTS 2023 int16 case, nibabel through its own gzip
reader about 4x; the build's bar (one worker within 1.5x a bare nibabel load) had no room for the 1.3x.

Reading is strict: a ``.gz`` file is inflated to its end, so a stream cut anywhere (even inside its
8-byte trailer, after the last voxel, which nibabel does not read) or with a bad CRC is an error.
Errors are one line naming the file (:class:`~brainprep.errors.CaseError`), the same whichever function
finds them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from isal import isal_zlib
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import apply_read_scaling
from nibabel.wrapstruct import WrapStructError

from brainprep.errors import MissingFileError, UnreadableFileError

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 31  # gzip container only (not zlib): a .nii.gz is gzip
#: Bytes :func:`inflate` asks the decompressor for at a time (small enough to stay in the CPU cache).
INFLATE_SLICE = 1 << 22
#: Compressed bytes :func:`read_nifti_header` reads first (grown while the header needs more).
HEAD_READ = 1 << 16
_NIFTI_HEADER_SIZES = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
_LARGEST_HEADER = max(_NIFTI_HEADER_SIZES) + 4  # NIfTI-2 header and its extension flag

CANONICAL_AXCODES: tuple[str, str, str] = ("R", "A", "S")

# What nibabel's header classes raise for bytes that are not a (whole) NIfTI header.
_HEADER_ERRORS = (ImageFileError, HeaderDataError, OSError, ValueError, WrapStructError, EOFError)
# What ISA-L raises for damaged data (not a zlib.error).
_INFLATE_ERRORS = (isal_zlib.error,)


def _describe(err: BaseException) -> str:
    """One line saying what is wrong with a file, from an exception of the inflater or of nibabel."""
    text = (str(err).strip() or type(err).__name__).splitlines()[0]
    if isinstance(err, EOFError) or "end-of-stream" in text or "ended before" in text:
        return f"truncated file ({text})"
    if isinstance(err, _INFLATE_ERRORS):
        return f"corrupt or not gzip data ({text})"
    # nibabel says "Cannot work out file type" when no image class accepts the header bytes.
    # nibabel says "Binary block is wrong size" for header bytes cut short (read from memory).
    if isinstance(err, ImageFileError | WrapStructError) and (
        "work out file type" in text or "wrong size" in text
    ):
        return "no valid NIfTI-1/NIfTI-2 header (not a NIfTI file, or truncated inside the header)"
    return text


def ras_transform(affine: np.ndarray) -> np.ndarray:
    """Orientation transform (nibabel ``ornt``, shape (3, 2)) that takes ``affine``'s axes to RAS."""
    return ornt_transform(io_orientation(affine), axcodes2ornt(CANONICAL_AXCODES))


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute the first three axes of ``array`` so that they run R, A, S.

    Args:
        array: (X, Y, Z, ...) voxel array in the source orientation.
        affine: (4, 4) source voxel-to-world affine.

    Returns:
        The C-contiguous reoriented array and its (4, 4) affine (same world coordinates).
    """
    transform = ras_transform(affine)
    shape = array.shape[:3]
    reoriented = np.ascontiguousarray(apply_orientation(array, transform))
    new_affine = affine @ inv_ornt_aff(transform, shape)
    return reoriented, new_affine


def from_ras(array: np.ndarray, source_affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ras`: put a RAS (X, Y, Z, ...) array back on the source voxel grid."""
    inverse = ornt_transform(axcodes2ornt(CANONICAL_AXCODES), io_orientation(source_affine))
    return np.ascontiguousarray(apply_orientation(array, inverse))


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, header=None) -> Path:
    """Write ``array`` with ``affine`` to ``path`` atomically (temporary file, then rename; a failed write
    removes the temporary file and leaves ``path`` as it was).

    Raises:
        OSError: the write failed; it names ``path`` where the writer's error named no file (gzip's
            and nibabel's do not), so the CLI reports it as the output's
            (:func:`brainprep.cli.outputs.writing`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine, header=header)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    # not brainprep.files.replacing: nibabel picks the format from the whole .nii.gz suffix
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.partial{suffix}")
    try:
        nib.save(image, tmp)
        tmp.replace(path)
    except OSError as error:
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- decoding: one read, one hash, one-shot inflate, voxels as a view ---------------------------------------
@dataclass(frozen=True, eq=False)
class NiftiVoxels:
    """The voxels of one NIfTI file as a read-only view of its decoded bytes (no copy, no dtype cast).

    Attributes:
        image: the nibabel image of the header and extensions (its ``dataobj`` holds no voxels).
        raw: (X, Y, Z[, C]) array in the file's dtype, unscaled, a view of the decoded bytes.
        slope, inter: the read scaling nibabel applies (1 and 0 when the header has none).
        sha256: hex digest of the file's bytes as stored (compressed).
        size: bytes of the file as stored.
    """

    image: nib.Nifti1Image
    raw: np.ndarray
    slope: float
    inter: float
    sha256: str
    size: int

    @property
    def affine(self) -> np.ndarray:
        return self.image.affine

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.image.shape)

    def get_data_dtype(self) -> np.dtype:
        """The file's voxel dtype, as a nibabel image's ``get_data_dtype()`` says it."""
        return self.raw.dtype

    @property
    def scaled(self) -> bool:
        """Whether the header asks for read scaling (a slope other than 1 or an intercept other than 0)."""
        return not (self.slope == 1.0 and self.inter == 0.0)

    def values(self) -> np.ndarray:
        """The voxels as ``np.asarray(nib.load(path).dataobj)`` gives them: :attr:`raw` itself when
        unscaled, else scaled to float64 (nibabel's scale factors are float64)."""
        return scale_voxels(self.raw, self.slope, self.inter, np.float64) if self.scaled else self.raw


def inflate(data: bytes, out: np.ndarray | None = None, limit: int | None = None) -> np.ndarray:
    """Decompress a whole gzip file (every member) in one pass, checking each member's CRC and length.

    Uses ISA-L (python-isal: the same bytes as zlib, ~2x faster; it releases the GIL). The output goes
    in slices of :data:`INFLATE_SLICE` bytes into one numpy array sized by the gzip trailer: a
    decompressor that grows one ``bytes`` object writes 140 MB of fresh memory in 4 KiB pages, while
    numpy backs large arrays with huge pages (0.08 instead of 0.115 s for a 240x240x155x4 case).

    Args:
        data: the gzip file's bytes.
        out: uint8 (n,) array to decompress into (reused across files by a build worker, see
            :class:`ReadBuffers`); a new array when ``None`` or too small.
        limit: stop once at least this many bytes are out (the head of a file, for its header); the
            rest of the stream is then neither inflated nor checked. ``None``: the whole stream.

    Returns:
        uint8 array of the decompressed bytes: a view of ``out`` when it was large enough.

    Raises:
        EOFError: the stream ends before its end-of-stream marker (a truncated file).
        isal_zlib.error: corrupt data or a bad CRC.
    """
    # A head is asked for in one slice of its size: inflating more than that would be wasted.
    step = INFLATE_SLICE if limit is None else max(limit, 1 << 12)
    size_hint = gzip_size_hint(data) if limit is None else step
    if out is None or len(out) < size_hint:
        out = np.empty(max(size_hint, 1 << 16), dtype=np.uint8)
    filled = 0
    while True:
        stream = isal_zlib.decompressobj(wbits=_GZIP_WBITS)
        pending = data
        while True:
            part = stream.decompress(pending, step)
            if filled + len(part) > len(out):
                grown = np.empty(max(2 * len(out), filled + len(part)), dtype=np.uint8)
                grown[:filled] = out[:filled]
                out = grown
            out[filled : filled + len(part)] = np.frombuffer(part, dtype=np.uint8)
            filled += len(part)
            if limit is not None and filled >= limit:
                return out[:filled]
            pending = stream.unconsumed_tail
            if stream.eof or not (part or pending):
                break
        if not stream.eof:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        data = stream.unused_data
        if not data.strip(b"\x00"):  # gzip allows trailing zero padding after the last member
            break
    return out[:filled]


def gzip_size_hint(data: bytes) -> int:
    """ISIZE of a gzip file's trailer (its last member's length mod 2**32): exact for the usual
    single-member file, a hint otherwise; 0 for fewer than 4 bytes."""
    return int.from_bytes(data[-4:], "little") if len(data) >= 4 else 0


class ReadBuffers:
    """Reusable uint8 destinations for inflated files, one per file position of a case.

    A build worker reads one case after another; decompressing each into fresh memory costs the kernel
    time to map it (0.23 instead of 0.11 s per 240x240x155x4 case when the previous case's memory was
    just released). Arrays read into these buffers are valid until the next read with them: hold one
    case at a time.
    """

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []

    def take(self, position: int, nbytes: int) -> np.ndarray:
        """uint8 buffer ``position``, grown to at least ``nbytes`` (its content is undefined)."""
        while len(self._arrays) <= position:
            self._arrays.append(np.empty(0, dtype=np.uint8))
        if len(self._arrays[position]) < nbytes:
            self._arrays[position] = np.empty(nbytes, dtype=np.uint8)
        return self._arrays[position]

    def for_file(self, position: int, data: bytes) -> np.ndarray:
        """The buffer of the ``position``-th file of a case, grown to hold ``data`` inflated."""
        return self.take(position, gzip_size_hint(data))


def _existing_file(path: Path, case_id: str | None) -> Path:
    """``path`` as a Path, after checking it is a regular, non-empty file (every reader's first check)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError("file not found", case_id=case_id, path=path)
    if not path.is_file():
        raise UnreadableFileError("not a regular file (a folder?)", case_id=case_id, path=path)
    if path.stat().st_size == 0:  # nibabel's words for it
        raise UnreadableFileError("cannot read NIfTI header: Empty file", case_id=case_id, path=path)
    return path


def _inflate_failure(err: BaseException, path: Path, case_id: str | None) -> UnreadableFileError:
    """The one-line error of a gzip stream that does not inflate (cut short, or damaged)."""
    return UnreadableFileError(f"cannot read NIfTI file: {_describe(err)}", case_id=case_id, path=path)


def _not_gzip(path: Path, case_id: str | None) -> UnreadableFileError:
    """The error of a file named ``*.gz`` whose bytes are not gzip (nibabel goes by name for .nii.gz)."""
    return UnreadableFileError(
        "cannot read NIfTI header: corrupt or not gzip data (Not a gzipped file)", case_id=case_id, path=path
    )


def _nifti_class(raw: bytes | np.ndarray) -> type[nib.Nifti1Image]:
    """Nifti1Image or Nifti2Image from ``sizeof_hdr`` (348 or 540, either byte order)."""
    if len(raw) >= 4:
        for order in ("<", ">"):
            image_class = _NIFTI_HEADER_SIZES.get(int(np.frombuffer(bytes(raw[:4]), dtype=f"{order}i4")[0]))
            if image_class is not None:
                return image_class
    raise ImageFileError("Cannot work out file type")


def _header_extent(raw: bytes | np.ndarray) -> tuple[type[nib.Nifti1Image], int]:
    """The image class of a file's first bytes and how many bytes its header and extensions take
    (up to the voxel offset; at least the header and the 4-byte extension flag)."""
    image_class = _nifti_class(raw)
    header_size = image_class.header_class.sizeof_hdr
    header = image_class.header_class.from_fileobj(io.BytesIO(bytes(raw[:header_size])))
    return image_class, max(int(header.get_data_offset()), header_size + 4)


def decode_nifti_header(raw: bytes | np.ndarray, path: Path, case_id: str | None = None) -> nib.Nifti1Image:
    """The nibabel image of a NIfTI file's header and extensions, from its first (uncompressed) bytes.

    The image is made from the bytes before the voxel offset alone (nibabel's own header classes decode
    them: shape, dtype, affine, scaling are nibabel's); its ``dataobj`` cannot read voxels.

    Raises:
        UnreadableFileError: no valid NIfTI-1/NIfTI-2 header in ``raw``.
    """
    try:
        image_class, extent = _header_extent(raw)
        return image_class.from_bytes(bytes(raw[:extent]))
    except _HEADER_ERRORS as err:
        raise UnreadableFileError(
            f"cannot read NIfTI header: {_describe(err)}", case_id=case_id, path=path
        ) from err


def decode_nifti_bytes(
    raw: bytes | np.ndarray, path: Path, case_id: str | None = None
) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Header image and unscaled voxel view (file dtype, file shape) of uncompressed NIfTI bytes.

    Args:
        raw: the file's bytes, uncompressed (``bytes`` or a uint8 array).

    Raises:
        UnreadableFileError: no valid header, or fewer voxel bytes than the header says.
    """
    image = decode_nifti_header(raw, path, case_id)
    proxy = image.dataobj
    shape = tuple(int(s) for s in proxy.shape)
    dtype = np.dtype(proxy.dtype)
    count = int(np.prod(shape))
    available = len(raw) - int(proxy.offset)
    if available < count * dtype.itemsize:
        # nibabel's words for the same problem ("Expected N bytes, got M bytes").
        raise UnreadableFileError(
            f"cannot read voxel data: truncated file (Expected {count * dtype.itemsize} bytes, "
            f"got {max(available, 0)} bytes)",
            case_id=case_id,
            path=path,
        )
    voxels = np.frombuffer(raw, dtype=dtype, count=count, offset=int(proxy.offset))
    voxels.flags.writeable = False  # a view of the file's bytes, as for ``bytes`` input
    return image, voxels.reshape(shape, order=proxy.order)


def _head(stream: BinaryIO, gz: bool, want: int, path: Path, case_id: str | None) -> bytes | np.ndarray:
    """At least the first ``want`` uncompressed bytes of an open file (fewer when it holds fewer).

    A ``.gz`` file is read in growing prefixes until they inflate to ``want`` bytes; only a stream
    that ends (or breaks) before that is an error, with :func:`read_nifti_voxels`' words.
    """
    chunk = max(HEAD_READ, want)
    while True:
        stream.seek(0)
        data = stream.read(chunk)
        whole = len(data) < chunk
        if not gz:
            return data
        try:
            head = inflate(data, limit=want)
        except EOFError as err:  # the prefix ends inside a member: read more, unless it is the file
            if whole:
                raise _inflate_failure(err, path, case_id) from err
        except _INFLATE_ERRORS as err:
            raise _inflate_failure(err, path, case_id) from err
        else:
            if len(head) >= want or whole:
                return head
        chunk *= 4


def read_nifti_header(path: Path, case_id: str | None = None) -> nib.Nifti1Image:
    """The header (and extensions) of a NIfTI file, as :func:`read_nifti_voxels` decodes it, reading
    and inflating only the head of the file.

    Nothing after the header is read: damage further in shows only when the voxels are read.

    Returns:
        The nibabel image of the header (``.shape``, ``.affine``, ``.header``; no voxels).

    Raises:
        MissingFileError: ``path`` does not exist.
        UnreadableFileError: not a regular file, a gzip stream that breaks inside the header, no header.
    """
    path = _existing_file(path, case_id)
    with path.open("rb") as stream:
        gz = stream.read(2) == _GZIP_MAGIC
        if not gz and path.name.endswith(".gz"):
            raise _not_gzip(path, case_id)
        raw = _head(stream, gz, _LARGEST_HEADER, path, case_id)
        try:
            extent = _header_extent(raw)[1]
        except _HEADER_ERRORS:
            extent = 0  # decode_nifti_header names the problem
        if extent > len(raw):
            raw = _head(stream, gz, extent, path, case_id)
    return decode_nifti_header(raw, path, case_id)


def read_nifti_voxels(
    path: Path, case_id: str | None = None, buffers: ReadBuffers | None = None, position: int = 0
) -> NiftiVoxels:
    """Read a NIfTI file once: its bytes are hashed, inflated in one shot and viewed as voxels.

    A ``.gz`` file is inflated to its end, so a stream cut inside its trailer or with a bad CRC is an
    error here (nibabel reads only the bytes the header asks for).

    Args:
        path: the file.
        case_id: named in errors.
        buffers, position: inflate into ``buffers.for_file(position, ...)`` (the voxels are then valid
            until the next read into the same buffer); ``None``: into new memory.

    Raises:
        MissingFileError: ``path`` does not exist.
        UnreadableFileError: not a regular file, a damaged gzip stream, no NIfTI header, cut voxel data.
    """
    path = _existing_file(path, case_id)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    raw: bytes | np.ndarray = data
    if data[:2] == _GZIP_MAGIC:  # nibabel also goes by content for .nii.gz
        try:
            raw = inflate(data, None if buffers is None else buffers.for_file(position, data))
        except (EOFError, *_INFLATE_ERRORS) as err:
            raise _inflate_failure(err, path, case_id) from err
    elif path.name.endswith(".gz"):
        raise _not_gzip(path, case_id)
    image, voxels = decode_nifti_bytes(raw, path, case_id)
    proxy = image.dataobj
    return NiftiVoxels(image, voxels, float(proxy.slope), float(proxy.inter), digest, len(data))


def scale_voxels(raw: np.ndarray, slope: float, inter: float, dtype: type = np.float32) -> np.ndarray:
    """``raw`` scaled exactly as nibabel's ``get_fdata(dtype=dtype)`` scales it (elementwise, so a patch
    of the raw array gives the same patch of the scaled volume).

    Args:
        raw: any shape, the file's dtype (a view of :attr:`NiftiVoxels.raw`).

    Returns:
        A new ``dtype`` array of the same shape.
    """
    dtype = np.dtype(dtype)
    # nibabel's ArrayProxy._get_scaled: the scale factors are cast to dtype when that is safe, then
    # apply_read_scaling (which may upcast), then a cast to dtype.
    scl_slope, scl_inter = np.asanyarray(slope), np.asanyarray(inter)
    if np.can_cast(scl_slope, dtype):
        scl_slope = scl_slope.astype(dtype)
    if np.can_cast(scl_inter, dtype):
        scl_inter = scl_inter.astype(dtype)
    scaled = apply_read_scaling(np.asarray(raw), scl_slope, scl_inter)
    return np.array(scaled, dtype=dtype, order="C", copy=True)


def ras_view(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`to_ras` without the copy: a flipped/transposed view of ``array`` and its RAS affine."""
    transform = ras_transform(affine)
    shape = array.shape[:3]
    return apply_orientation(array, transform), affine @ inv_ornt_aff(transform, shape)


def ras_affine(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(4, 4) affine of the canonical RAS grid of a source grid (``affine``, spatial ``shape``): the
    affine :func:`ras_view` gives, from a header alone."""
    return affine @ inv_ornt_aff(ras_transform(affine), tuple(shape[:3]))


def ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the R, A, S axes of the canonical grid of a source ``affine`` (4, 4).

    The norm of each voxel axis in world space (the affine's column norms, what nibabel's ``voxel_sizes``
    computes), put in the order :func:`to_ras` puts the axes: for an LPS BraTS file the same three
    numbers, for a file stored S, R, A the first becomes the third. A RAS affine gives its own norms.
    """
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3, dtype=np.float64)
    spacing[ras_transform(affine)[:, 0].astype(int)] = norms  # row i: where source axis i goes
    return tuple(float(v) for v in spacing)  # type: ignore[return-value]
