"""brainprep's one NIfTI decode (brainprep.read.nifti) against nibabel, and one set of words per problem.

Bit for bit: every real file in ../shared/data and synthetic edge cases (dtypes, scaling, qform/sform,
.nii/.nii.gz, multi-member gzip, NIfTI-2) decode to nibabel's header, affine, raw voxels and
``get_fdata`` values. Same words: a bad case gives the same one-line message whether ``read_case``,
``read_case_arrays`` (the build's write stage), ``brainprep check`` or the build plan finds it.
"""

from __future__ import annotations

import gzip
import io
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA, ras_affine, small_case, write_brats_case, write_msd_case, write_nifti_file

from brainprep import discover_cases, read_case
from brainprep.builder.plan import plan_case
from brainprep.check import check_case
from brainprep.errors import CaseError
from brainprep.params import BuildParams
from brainprep.read.case import read_case_arrays
from brainprep.read.nifti import read_nifti_header, read_nifti_voxels, scale_voxels

REAL_FILES = sorted(SHARED_DATA.glob("**/*.nii.gz")) if SHARED_DATA.is_dir() else []


def _bits(array: np.ndarray) -> np.ndarray:
    """The bytes of ``array`` (C order) as uint8: equal bits, NaN and -0.0 included."""
    return np.ascontiguousarray(array).view(np.uint8)


def assert_decodes_like_nibabel(path: Path) -> None:
    """Header bytes, extensions, affine, shape, dtype, raw voxels and float32/float64 values equal."""
    reference = nib.load(path)
    voxels = read_nifti_voxels(path)
    header = read_nifti_header(path)
    for image in (voxels.image, header):
        assert type(image) is type(reference)
        assert image.header.binaryblock == reference.header.binaryblock
        assert [e.get_content() for e in image.header.extensions] == [
            e.get_content() for e in reference.header.extensions
        ]
        assert image.shape == reference.shape
        np.testing.assert_array_equal(image.affine, reference.affine)
    raw = reference.dataobj.get_unscaled()
    assert voxels.raw.dtype == raw.dtype and voxels.raw.shape == raw.shape
    np.testing.assert_array_equal(_bits(voxels.raw), _bits(raw))
    for dtype in (np.float32, np.float64):
        expected = reference.get_fdata(dtype=dtype)
        np.testing.assert_array_equal(
            _bits(scale_voxels(voxels.raw, voxels.slope, voxels.inter, dtype)), _bits(expected)
        )
    values = np.asarray(reference.dataobj)
    assert voxels.values().dtype == values.dtype
    np.testing.assert_array_equal(_bits(voxels.values()), _bits(values))


@pytest.mark.skipif(not REAL_FILES, reason=f"no real NIfTI files under {SHARED_DATA}")
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: str(p.relative_to(SHARED_DATA)))
def test_every_real_file_decodes_like_nibabel(path):
    assert_decodes_like_nibabel(path)


@pytest.mark.skipif(not (SHARED_DATA / "brats2023").is_dir(), reason=f"{SHARED_DATA}/brats2023 is absent")
def test_read_case_of_the_real_case_equals_nibabel_reoriented():
    """What check, show and predict read: nibabel's float32 volume, reoriented to RAS, channels first."""
    files = discover_cases(SHARED_DATA / "brats2023").cases[0]
    case = read_case(files)
    channels = [nib.load(p) for p in files.image_paths]
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(channels[0].affine), nib.orientations.axcodes2ornt("RAS")
    )
    expected = np.stack(
        [nib.orientations.apply_orientation(c.get_fdata(dtype=np.float32), ornt) for c in channels]
    )
    np.testing.assert_array_equal(_bits(case.image), _bits(expected))
    np.testing.assert_array_equal(case.source_affine, channels[0].affine)


# ---------------------------------------------------------------------------------------------------------
# synthetic edge cases

SHEAR = np.array([[-1.0, 0.1, 0, 20], [0, 1.25, 0.2, -30], [0, 0, 2.5, -10], [0, 0, 0, 1]])


def _image(dtype: str, shape: tuple[int, ...], nifti2: bool = False) -> nib.Nifti1Image:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        data = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        data = (rng.standard_normal(shape) * 1000).astype(dtype)
        data.flat[0], data.flat[1] = np.nan, -0.0
    image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    return image_class(data, SHEAR)


def _save(image: nib.Nifti1Image, path: Path, members: int = 1, scaling=None) -> Path:
    """Write ``image`` to ``path`` (.nii or .nii.gz; ``members`` gzip members for .nii.gz), with
    ``(scl_slope, scl_inter)`` written into its header as given (nibabel would choose its own)."""
    raw = image.to_bytes()
    if scaling is not None:
        header = image.header_class.from_fileobj(io.BytesIO(raw))
        header["scl_slope"], header["scl_inter"] = scaling
        raw = header.binaryblock + raw[len(header.binaryblock) :]
    if path.name.endswith(".gz"):
        cuts = np.linspace(0, len(raw), members + 1).astype(int)
        raw = b"".join(gzip.compress(raw[a:b]) for a, b in itertools.pairwise(cuts))
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("dtype", ["int16", "uint8", "float64", "float32", ">i2", "int32"])
@pytest.mark.parametrize("scaling", [None, (0.37, -12.5), (2.0, 0.0), (0.0, 5.0)])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_synthetic_file_decodes_like_nibabel(tmp_path, dtype, scaling, suffix):
    path = _save(_image(dtype, (7, 5, 3, 2)), tmp_path / f"x{suffix}", scaling=scaling)
    if scaling is not None:  # the file holds the scaling asked for (0 slope: nibabel reads it as none)
        proxy = nib.load(path).dataobj
        assert (proxy.slope, proxy.inter) == pytest.approx(scaling if scaling[0] else (1.0, 0.0))
    assert_decodes_like_nibabel(path)


@pytest.mark.parametrize("form", ["qform only", "sform only", "neither", "both, differing"])
def test_affine_from_qform_or_sform_like_nibabel(tmp_path, form):
    image = _image("int16", (6, 5, 4))
    other = np.diag([2.0, 2.0, 2.0, 1.0])
    if form == "qform only":
        image.set_qform(SHEAR, code=1)
        image.set_sform(None, code=0)
    elif form == "sform only":
        image.set_qform(None, code=0)
        image.set_sform(SHEAR, code=2)
    elif form == "neither":
        image.set_qform(None, code=0)
        image.set_sform(None, code=0)
    else:
        image.set_qform(other, code=1)
        image.set_sform(SHEAR, code=4)
    path = _save(image, tmp_path / "x.nii.gz")
    assert_decodes_like_nibabel(path)
    if form == "sform only":
        # the sform (float32 in the file) with the shear a qform cannot hold
        np.testing.assert_array_equal(read_nifti_header(path).affine, SHEAR.astype(np.float32))


@pytest.mark.parametrize("members", [2, 5])
def test_multi_member_gzip_decodes_like_nibabel(tmp_path, members):
    path = _save(_image("float32", (9, 8, 7)), tmp_path / "x.nii.gz", members)
    assert_decodes_like_nibabel(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti2_and_an_extension_decode_like_nibabel(tmp_path, suffix):
    image = _image("int16", (6, 5, 4), nifti2=True)
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 70_000))
    path = _save(image, tmp_path / f"x{suffix}")
    assert read_nifti_header(path).dataobj.offset > 70_000  # more than the first read inflates
    assert_decodes_like_nibabel(path)


# ---------------------------------------------------------------------------------------------------------
# one problem, one message, on every path


def _msd(root: Path):
    image, label = small_case()
    return write_msd_case(root, "BRATS_001", image, label, axcodes="LPS")


def _brats(root: Path):
    image, label = small_case()
    return write_brats_case(root, "BraTS-GLI-00001-000", image, label, "brats2023")


def _degenerate(path: Path) -> None:
    """Rewrite ``path`` with a sform whose second axis is zero (no qform: nibabel cannot write that)."""
    image = nib.Nifti1Image(np.asarray(nib.load(path).dataobj), None)
    image.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    nib.save(image, path)


def _rewrite(path: Path, change) -> None:
    source = nib.load(path)
    array, affine = change(np.asarray(source.dataobj), source.affine.copy())
    write_nifti_file(path, array, affine)


HEADER_PROBLEMS = {
    "missing image": (_brats, lambda w: w.image_paths[1].unlink(), "file not found"),
    "empty image": (_brats, lambda w: w.image_paths[1].write_bytes(b""), "Empty file"),
    "not gzip": (_brats, lambda w: w.image_paths[2].write_text("text " * 40), "not gzip"),
    "gzip, not NIfTI": (
        _brats,
        lambda w: w.image_paths[0].write_bytes(gzip.compress(b"no header " * 40)),
        "no valid NIfTI-1/NIfTI-2 header",
    ),
    "cut inside the header": (
        _msd,
        lambda w: w.image_paths[0].write_bytes(
            gzip.compress(gzip.decompress(w.image_paths[0].read_bytes())[:200])
        ),
        "no valid NIfTI-1/NIfTI-2 header",
    ),
    "gzip cut in the header": (
        _msd,
        lambda w: w.image_paths[0].write_bytes(w.image_paths[0].read_bytes()[:60]),
        "truncated file",
    ),
    "3D where 4D expected": (
        _msd,
        lambda w: _rewrite(w.image_paths[0], lambda a, f: (a[..., 0], f)),
        "expected a 4D image",
    ),
    "five channels": (
        _msd,
        lambda w: _rewrite(w.image_paths[0], lambda a, f: (np.concatenate([a, a[..., :1]], -1), f)),
        "found shape (48, 48, 20, 5)",
    ),
    "4D channel file": (
        _brats,
        lambda w: _rewrite(w.image_paths[2], lambda a, f: (np.stack([a, a], -1), f)),
        "expected a 3D channel image",
    ),
    "channel shape": (
        _brats,
        lambda w: _rewrite(w.image_paths[3], lambda a, f: (a[:-1], f)),
        "channel shape (47, 48, 20) differs from (48, 48, 20)",
    ),
    "channel affine": (
        _brats,
        lambda w: _rewrite(w.image_paths[1], lambda a, f: (a, f + np.diag([0, 0, 0.5, 0]))),
        "channel affine differs",
    ),
    "degenerate affine": (
        _msd,
        lambda w: _degenerate(w.image_paths[0]),
        "affine must be finite and invertible",
    ),
    "label shape": (_brats, lambda w: _rewrite(w.label_path, lambda a, f: (a[:, :-2], f)), "label shape"),
    "label value": (
        _msd,
        lambda w: _rewrite(w.label_path, lambda a, f: (np.where(a == 3, 5, a).astype(np.uint8), f)),
        "found {5}",
    ),
    "label cut in its trailer": (
        _brats,
        lambda w: w.label_path.write_bytes(w.label_path.read_bytes()[:-3]),
        "truncated file",
    ),
}
# Found only when the image voxels are decoded: not by the plan, which reads image headers only.
VOXEL_PROBLEMS = {
    "image cut in its voxels": (
        _msd,
        lambda w: w.image_paths[0].write_bytes(w.image_paths[0].read_bytes()[:-400]),
        "truncated file",
    ),
    "image cut in its trailer": (
        _brats,
        lambda w: w.image_paths[3].write_bytes(w.image_paths[3].read_bytes()[:-2]),
        "truncated file",
    ),
    "NaN voxel": (
        _brats,
        lambda w: _rewrite(
            w.image_paths[2], lambda a, f: (np.where(a == a.max(), np.nan, a).astype("f4"), f)
        ),
        "NaN/Inf voxels in channel T1gd",
    ),
}


def _messages(root: Path, with_plan: bool) -> dict[str, str]:
    """The one-line message of each reader for the one case under ``root``."""
    files = discover_cases(root).cases[0]
    found = {}
    for name, read in (("read_case", read_case), ("read_case_arrays", read_case_arrays)):
        with pytest.raises(CaseError) as info:
            read(files)
        found[name] = " ".join(str(info.value).split())
    found["check"] = check_case(files, patch_size=(8, 8, 4)).problem
    if with_plan:
        found["plan"] = plan_case(files, 0, "train", BuildParams(), root).problem
    return found


@pytest.mark.parametrize(
    ("problems", "problem", "with_plan"),
    [(HEADER_PROBLEMS, name, True) for name in sorted(HEADER_PROBLEMS)]
    + [(VOXEL_PROBLEMS, name, False) for name in sorted(VOXEL_PROBLEMS)],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_problem_has_the_same_words_on_every_path(tmp_path, problems, problem, with_plan):
    """read_case, read_case_arrays, check and (for what a header shows) the build plan agree."""
    write, damage, words = problems[problem]
    damage(write(tmp_path))
    found = _messages(tmp_path, with_plan=with_plan)
    assert len(set(found.values())) == 1, found
    assert words in found["check"]


def test_the_header_of_a_cut_file_of_a_cut_file_reads_and_its_voxels_do_not(tmp_path):
    path = write_nifti_file(tmp_path / "x.nii.gz", small_case()[0][0], ras_affine())
    whole = nib.load(path)
    path.write_bytes(path.read_bytes()[:-400])
    header = read_nifti_header(path)  # the head of the file is intact
    assert header.header.binaryblock == whole.header.binaryblock
    with pytest.raises(CaseError, match="cannot read NIfTI file: truncated file"):
        read_nifti_voxels(path)
