"""The shared files: control-block layout, create/attach checks, cross-mapping visibility, and the
hypercall function IDs."""
from __future__ import annotations

import mmap
import os
import struct

import pytest

from protocol.hypercalls import (APF_FLAGS_MASK, APF_RESERVED_FLAGS, DEFAULT_PAGE_READY_PPI, PPI_MAX,
                                 PPI_MIN, ApfFlags, FuncId)
from protocol.messages import PAGE_SIZE
from shared.files import STAGE2_HEADER, STAGE2_MAGIC, ControlFile, GuestRam, LayoutError, Stage2
from shared.layout import (BLOCK, BLOCK_MAGIC, BLOCK_SIZE, FIELD_OFFSET, HEADER, HEADER_MAGIC,
                           LAYOUT_VERSION, STAGE2_VERSION, RESERVED_OFFSET, RESERVED_SIZE, WAKE_ALL_TOKEN, Reason,
                           block_offset, control_file_size, pack_block, pack_header)

VCPUS, PAGES = 3, 32
FIELDS = ("reason", "np_token", "ready_token", "enabled")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")


def poke(path: str, offset: int, data: bytes) -> None:
    """Change bytes of a file behind every mapping's back, as a damaged or foreign writer would."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def peek(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


@pytest.fixture
def control_path(tmp_path):
    """A freshly created control file for VCPUS vCPUs and PAGES pages (the creator is closed)."""
    path = str(tmp_path / "control")
    ControlFile.create(path, VCPUS, PAGES).close()
    return path


@pytest.fixture
def stage2_path(tmp_path):
    path = str(tmp_path / "stage2")
    Stage2.create(path, PAGES).close()
    return path


# -- the layout itself ---------------------------------------------------------------------------

def test_header_and_block_are_64_bytes():
    """The control header, each control block and the stage-2 header are exactly 64 bytes."""
    assert BLOCK_SIZE == 64
    assert HEADER.size == BLOCK.size == STAGE2_HEADER.size == 64


@pytest.mark.parametrize("name", FIELDS)
def test_field_offsets_match_the_block_struct(name):
    """FIELD_OFFSET[name] is where BLOCK.pack puts that field: single-field access hits the field."""
    values = dict(zip(FIELDS, (0x11111111, 0x22222222, 0x33333333, 0x44444444)))
    raw = BLOCK.pack(BLOCK_MAGIC, LAYOUT_VERSION, 7, *(values[f] for f in FIELDS), bytes(RESERVED_SIZE))
    assert U32.unpack_from(raw, FIELD_OFFSET[name])[0] == values[name]


def test_field_offsets_are_the_documented_ones():
    """The mutable fields sit at 8, 12, 16, 20, u32-aligned, then 40 reserved bytes to the end."""
    assert FIELD_OFFSET == {"reason": 8, "np_token": 12, "ready_token": 16, "enabled": 20}
    assert (RESERVED_OFFSET, RESERVED_SIZE) == (24, 40)
    assert RESERVED_OFFSET + RESERVED_SIZE == BLOCK_SIZE
    assert max(FIELD_OFFSET.values()) + 4 == RESERVED_OFFSET


def test_packed_header_and_block_carry_magic_and_version_first():
    """pack_header/pack_block start with the magic and LAYOUT_VERSION and leave reserved bytes zero."""
    assert HEADER.unpack(pack_header(VCPUS, PAGES)) == (
        HEADER_MAGIC, LAYOUT_VERSION, BLOCK_SIZE, PAGE_SIZE, VCPUS, PAGES, bytes(40))
    assert BLOCK.unpack(pack_block(5)) == (BLOCK_MAGIC, LAYOUT_VERSION, 5, Reason.NONE, 0, 0, 0, bytes(40))
    assert (HEADER_MAGIC, BLOCK_MAGIC, LAYOUT_VERSION) == (b"APFH", b"APFV", 1)


def test_sizes_offsets_and_special_values():
    """Block v is at 64*(1+v) after the header; the wake-all token is ~0 and reason 1 is not-present."""
    assert [block_offset(v) for v in range(3)] == [64, 128, 192]
    assert control_file_size(VCPUS) == 64 * (1 + VCPUS)
    assert WAKE_ALL_TOKEN == 0xFFFFFFFF
    assert (int(Reason.NONE), int(Reason.PAGE_NOT_PRESENT)) == (0, 1)


# -- ControlFile ---------------------------------------------------------------------------------

def test_control_create_writes_header_and_blocks(control_path):
    """A created control file is header + one initial block per vCPU, byte for byte."""
    expected = pack_header(VCPUS, PAGES) + b"".join(pack_block(v) for v in range(VCPUS))
    assert peek(control_path, 0, 1 << 16) == expected


def test_control_create_refuses_an_existing_file(control_path):
    """create() never clobbers an existing file."""
    with pytest.raises(FileExistsError):
        ControlFile.create(control_path, VCPUS, PAGES)


def test_control_attach_accepts_a_fresh_file(control_path):
    """A fresh file attaches and every mutable field reads 0."""
    ctl = ControlFile.attach(control_path, VCPUS, PAGES)
    try:
        assert [ctl.read(v, f) for v in range(VCPUS) for f in FIELDS] == [0] * (VCPUS * len(FIELDS))
    finally:
        ctl.close()


# (what to damage: offset, bytes) -> words the LayoutError message must contain
DAMAGE = [
    ("header-magic", 0, b"XXXX", "magic b'XXXX'"),
    ("header-version", 4, U16.pack(2), "layout version 2"),
    ("header-block-size", 6, U16.pack(32), "32-byte blocks"),
    ("header-page-size", 8, U32.pack(8192), "8192-byte pages"),
    ("header-vcpus", 12, U32.pack(VCPUS + 1), f"for {VCPUS + 1} vCPUs"),
    ("header-pages", 16, struct.pack("<Q", PAGES + 1), f"{PAGES + 1} pages"),
    ("block-magic", block_offset(1), b"XXXX", "control block of vCPU 1 is damaged"),
    ("block-version", block_offset(2) + 4, U16.pack(9), "control block of vCPU 2 is damaged"),
    ("block-owner", block_offset(0) + 6, U16.pack(2), "control block of vCPU 0 is damaged"),
    ("block-reserved-first", block_offset(1) + RESERVED_OFFSET, b"\x01", "vCPU 1 has non-zero reserved"),
    ("block-reserved-last", block_offset(2) + BLOCK_SIZE - 1, b"\x80", "vCPU 2 has non-zero reserved"),
    ("header-reserved", 24, b"\x01", "has non-zero reserved header bytes"),
    ("header-reserved-last", BLOCK_SIZE - 1, b"\xff", "has non-zero reserved header bytes"),
]


@pytest.mark.parametrize("where, offset, data, words", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_control_attach_refuses_a_damaged_file(control_path, where, offset, data, words):
    """Any header or block field that is not what the layout says, reserved bytes included (SPEC §6),
    makes attach fail with a LayoutError naming the problem (and, for the header, the file)."""
    poke(control_path, offset, data)
    with pytest.raises(LayoutError) as info:
        ControlFile.attach(control_path, VCPUS, PAGES)
    assert words in str(info.value)
    if where.startswith("header"):
        assert control_path in str(info.value)


@pytest.mark.parametrize("vcpus, pages, words", [
    (VCPUS + 1, PAGES, f"is for {VCPUS} vCPUs / {PAGES} pages, expected {VCPUS + 1} / {PAGES}"),
    (VCPUS - 1, PAGES, f"expected {VCPUS - 1} / {PAGES}"),
    (VCPUS, PAGES * 2, f"expected {VCPUS} / {PAGES * 2}"),
], ids=["more-vcpus", "fewer-vcpus", "other-pages"])
def test_control_attach_refuses_another_geometry(control_path, vcpus, pages, words):
    """Attaching with a vCPU or page count other than the file's is a LayoutError saying both."""
    with pytest.raises(LayoutError, match=words):
        ControlFile.attach(control_path, vcpus, pages)


@pytest.mark.parametrize("size, words", [
    (control_file_size(VCPUS) + 64, f"is {control_file_size(VCPUS) + 64} bytes, expected {control_file_size(VCPUS)}"),
    (control_file_size(VCPUS) - 1, f"is {control_file_size(VCPUS) - 1} bytes, expected"),
    (32, "too small (32 bytes)"),
    (0, "is empty"),
], ids=["longer", "shorter", "shorter-than-header", "empty"])
def test_control_attach_refuses_a_wrong_size(control_path, size, words):
    """A control file of any size but 64*(1+vcpus), even an empty one, is a LayoutError."""
    os.truncate(control_path, size)
    with pytest.raises(LayoutError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ControlFile.attach(control_path, VCPUS, PAGES)


def test_control_attach_refuses_a_missing_file(tmp_path):
    """A missing control file is a LayoutError that names the path, not a bare OSError."""
    path = str(tmp_path / "nope")
    with pytest.raises(LayoutError, match="cannot open shared file"):
        ControlFile.attach(path, VCPUS, PAGES)


@pytest.mark.parametrize("name", FIELDS)
def test_control_fields_are_shared_between_mappings(control_path, name):
    """A field written through one mapping is read back through a second, independent mapping of
    the same file (and through the file itself), in both directions, and touches nothing else."""
    host = ControlFile.attach(control_path, VCPUS, PAGES)
    guest = ControlFile.attach(control_path, VCPUS, PAGES)
    try:
        for vcpu in range(VCPUS):
            value = 0xA5000000 | (vcpu << 8) | len(name)
            host.write(vcpu, name, value)
            assert guest.read(vcpu, name) == value
            assert U32.unpack(peek(control_path, block_offset(vcpu) + FIELD_OFFSET[name], 4))[0] == value
            guest.write(vcpu, name, 0)
            assert host.read(vcpu, name) == 0
        host.write(1, name, 0xFFFFFFFF)
        others = [(v, f) for v in range(VCPUS) for f in FIELDS if (v, f) != (1, name)]
        assert all(guest.read(v, f) == 0 for v, f in others)
        for vcpu in range(VCPUS):
            guest.check_block(vcpu)          # magic, owner and reserved bytes untouched
    finally:
        host.close()
        guest.close()


def test_control_reset_restores_every_block(control_path):
    """reset() puts every block back to its initial bytes, seen by the other mapping too."""
    host = ControlFile.attach(control_path, VCPUS, PAGES)
    guest = ControlFile.attach(control_path, VCPUS, PAGES)
    try:
        for vcpu in range(VCPUS):
            for name in FIELDS:
                guest.write(vcpu, name, 12345)
        host.reset()
        assert peek(control_path, BLOCK_SIZE, 1 << 16) == b"".join(pack_block(v) for v in range(VCPUS))
        assert guest.read(2, "ready_token") == 0
    finally:
        host.close()
        guest.close()


# -- Stage2 --------------------------------------------------------------------------------------

def test_stage2_create_and_attach_share_valid_and_accessed(stage2_path):
    """The stage-2 file is 64 + 2*pages bytes; valid[] and accessed[] are separate arrays that
    both mappings see."""
    assert os.path.getsize(stage2_path) == Stage2.file_size(PAGES) == 64 + 2 * PAGES
    host = Stage2.attach(stage2_path, PAGES)
    guest = Stage2.attach(stage2_path, PAGES)
    try:
        assert len(guest.valid) == len(guest.accessed) == PAGES
        host.valid[3] = 1
        guest.accessed[PAGES - 1] = 1
        assert guest.valid[3] == 1 and host.accessed[PAGES - 1] == 1
        assert bytes(guest.valid) == bytes(3) + b"\x01" + bytes(PAGES - 4)
        assert bytes(host.accessed) == bytes(PAGES - 1) + b"\x01"
        assert peek(stage2_path, 64 + 3, 1) == b"\x01"
        assert peek(stage2_path, 64 + 2 * PAGES - 1, 1) == b"\x01"
        host.reset()
        assert not any(guest.valid) and not any(guest.accessed)
    finally:
        host.close()
        guest.close()


def test_stage2_header(stage2_path):
    """The stage-2 header is magic 'APFS', the layout version and the page count."""
    magic, version, _, pages, reserved = STAGE2_HEADER.unpack(peek(stage2_path, 0, 64))
    assert (magic, version, pages, reserved) == (STAGE2_MAGIC, STAGE2_VERSION, PAGES, bytes(48))
    assert STAGE2_VERSION == 2          # version 1 had a 0/1 `valid` byte, not a permission


@pytest.mark.parametrize("offset, data", [(0, b"XXXX"), (4, U16.pack(1)), (8, struct.pack("<Q", PAGES + 1))],
                         ids=["magic", "version", "pages"])
def test_stage2_attach_refuses_a_bad_header(stage2_path, offset, data):
    """A stage-2 header with another magic, version (1: before permissions) or page count is a
    LayoutError."""
    poke(stage2_path, offset, data)
    with pytest.raises(LayoutError, match=f"is not a version-{STAGE2_VERSION} table of {PAGES} pages"):
        Stage2.attach(stage2_path, PAGES)


def test_stage2_pad_and_reserved_bytes_are_not_checked(stage2_path):
    """SPEC §6: unlike the control header's reserved bytes (refused above), the stage-2 header's pad
    and reserved bytes are not checked on attach."""
    poke(stage2_path, 6, b"\xff\xff")
    poke(stage2_path, 16, b"\x01" * 48)
    Stage2.attach(stage2_path, PAGES).close()


@pytest.mark.parametrize("pages", [PAGES - 1, PAGES + 1])
def test_stage2_attach_refuses_a_wrong_size(stage2_path, pages):
    """Attaching for another page count fails on the file size, before reading the header."""
    with pytest.raises(LayoutError, match=f"expected {Stage2.file_size(pages)}"):
        Stage2.attach(stage2_path, pages)


# -- GuestRam ------------------------------------------------------------------------------------

def test_guest_ram_is_shared_between_mappings(tmp_path):
    """RAM written through one mapping is seen through another; attach checks the size."""
    path = str(tmp_path / "ram")
    host = GuestRam.create(path, PAGES)
    guest = GuestRam.attach(path, PAGES)
    try:
        assert os.path.getsize(path) == PAGES * PAGE_SIZE
        with host.page(5) as page:
            page[:4] = b"APF!"
        with guest.page(5) as page:
            assert bytes(page[:4]) == b"APF!"
        assert peek(path, 5 * PAGE_SIZE, 4) == b"APF!"
    finally:
        guest.close()
        host.close()
    with pytest.raises(LayoutError, match=f"expected {(PAGES + 1) * PAGE_SIZE}"):
        GuestRam.attach(path, PAGES + 1)


def test_free_pages_returns_memory_to_the_system(shm_dir):
    """free_pages() punches a hole: the file's allocated blocks drop by the freed pages, those
    pages read zero through every mapping, and the others keep their content."""
    pages = 256
    path = os.path.join(shm_dir, "ram")
    host = GuestRam.create(path, pages)
    guest = GuestRam.attach(path, pages)
    try:
        for gfn in range(pages):
            with host.page(gfn) as page:
                page[:] = bytes([gfn % 255 + 1]) * PAGE_SIZE
        full = os.stat(path).st_blocks * 512
        assert full >= pages * PAGE_SIZE
        host.free_pages(64, 128)
        after = os.stat(path).st_blocks * 512
        assert full - after >= 128 * PAGE_SIZE
        assert after >= 128 * PAGE_SIZE
        with guest.page(64) as page:
            assert not any(page)
        with guest.page(191) as page:
            assert not any(page)
        with guest.page(63) as page:
            assert page[0] == 63 % 255 + 1
        with guest.page(192) as page:
            assert page[PAGE_SIZE - 1] == 192 % 255 + 1
    finally:
        guest.close()
        host.close()


def test_madv_remove_is_available():
    """The platform has MADV_REMOVE, which free_pages relies on."""
    assert hasattr(mmap, "MADV_REMOVE")


# -- hypercall constants -------------------------------------------------------------------------

FAST_CALL, SMC64 = 1 << 31, 1 << 30


def owner(func_id: int) -> int:
    return (func_id >> 24) & 0x3F


@pytest.mark.parametrize("func", list(FuncId), ids=lambda f: f.name)
def test_function_ids_are_smccc_fast_calls(func):
    """Every function ID is an SMCCC fast call with bits 23..16 zero (no hint, reserved)."""
    assert func & FAST_CALL
    assert (func >> 16) & 0xFF == 0


@pytest.mark.parametrize("func", [FuncId.APF_FEATURES, FuncId.APF_ENABLE, FuncId.APF_DISABLE, FuncId.APF_ACK],
                         ids=lambda f: f.name)
def test_apf_calls_are_vendor_hypervisor_smc64(func):
    """APF calls are owned by the vendor-specific hypervisor service (owner 6), SMC64 convention."""
    assert owner(func) == 6
    assert func & SMC64


def test_psci_and_smccc_version_owners():
    """PSCI SYSTEM_OFF is owner 4 (standard secure service), function 8, SMC32; SMCCC_VERSION is
    owner 0 function 0."""
    assert owner(FuncId.PSCI_SYSTEM_OFF) == 4
    assert FuncId.PSCI_SYSTEM_OFF & 0xFFFF == 8 and not FuncId.PSCI_SYSTEM_OFF & SMC64
    assert owner(FuncId.SMCCC_VERSION) == 0 and FuncId.SMCCC_VERSION & 0xFFFF == 0


def test_apf_function_numbers_start_with_features():
    """APF function numbers are consecutive, features first: FEATURES < ENABLE < DISABLE < ACK."""
    numbers = [f & 0xFFFF for f in (FuncId.APF_FEATURES, FuncId.APF_ENABLE, FuncId.APF_DISABLE, FuncId.APF_ACK)]
    assert numbers == list(range(numbers[0], numbers[0] + 4))


def test_enable_flags_fit_below_the_block_alignment():
    """APF_ENABLE flags live in the bits a 64-byte aligned IPA leaves free, and the reserved mask is
    exactly the rest of them."""
    assert APF_FLAGS_MASK == BLOCK_SIZE - 1
    defined = int(ApfFlags.ENABLED | ApfFlags.SEND_ALWAYS | ApfFlags.DELIVERY_AS_INT)
    assert defined & ~APF_FLAGS_MASK == 0
    assert APF_RESERVED_FLAGS & defined == 0
    assert APF_RESERVED_FLAGS | defined == APF_FLAGS_MASK
    assert PPI_MIN <= DEFAULT_PAGE_READY_PPI <= PPI_MAX and (PPI_MIN, PPI_MAX) == (16, 31)
