//! The embedded objects as build.rs left them: present, aligned for aya, eBPF ELF files.
//! Needs no privileges.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowgate_ebpf::objects;

#[test]
fn every_object_is_an_aligned_ebpf_elf() {
    assert!(objects::ALL.iter().any(|(name, _)| *name == "TEST_ECHO"), "bpf/test/echo.c was not built");
    for (name, bytes) in objects::ALL {
        if bytes.is_empty() {
            // Left out by FLOWGATE_BPF_SKIP; loading it must say so.
            let err = flowgate_ebpf::load(bytes, None, &[]).unwrap_err();
            assert!(err.to_string().contains("FLOWGATE_BPF_SKIP"), "{err}");
            continue;
        }
        assert_eq!(bytes.as_ptr() as usize % 8, 0, "{name} is not 8-byte aligned");
        assert_eq!(&bytes[..4], b"\x7fELF", "{name} is not an ELF file");
        assert_eq!(bytes[4], 2, "{name} is not a 64-bit ELF");
        // e_machine, little endian: EM_BPF = 247.
        assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 247, "{name} is not an eBPF object");
        assert_eq!(objects::name_of(bytes), Some(*name));
    }
}

#[test]
fn objects_are_named_by_address_only() {
    let copy = objects::TEST_ECHO.to_vec();
    assert_eq!(objects::name_of(objects::TEST_ECHO), Some("TEST_ECHO"));
    assert_eq!(objects::name_of(&copy), None);
}
