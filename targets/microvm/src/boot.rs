//! From QEMU's PVH entry (32-bit protected mode, paging off, `ebx` = the
//! `hvm_start_info`) to Rust in 64-bit long mode.
//!
//! The page tables identity-map the first 4 GiB with 2 MiB pages: RAM,
//! and the virtio-mmio window at 0xfeb0_0000, all at their physical
//! addresses, so DMA addresses are pointers and nothing needs remapping.

use core::arch::global_asm;

/// Stack of the one thread there is. The NBD server's connection state
/// (about 18 KiB a connection) lives on it.
pub const STACK_SIZE: usize = 1 << 20;

global_asm!(
    r#"
    /* Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18): where QEMU enters. */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    mov esi, ebx

    /* 2048 PD entries of 2 MiB (present, writable, huge) = 4 GiB. */
    mov edi, offset boot_pd
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [edi + ecx * 8], eax
    mov dword ptr [edi + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, 2048
    jb 2b

    /* The PDPT points at the four PDs, the PML4 at the PDPT. */
    mov edi, offset boot_pdpt
    mov eax, offset boot_pd
    or eax, 0x3
    xor ecx, ecx
3:
    mov [edi + ecx * 8], eax
    mov dword ptr [edi + ecx * 8 + 4], 0
    add eax, 0x1000
    inc ecx
    cmp ecx, 4
    jb 3b
    mov eax, offset boot_pdpt
    or eax, 0x3
    mov [boot_pml4], eax

    mov eax, offset boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x20            /* PAE */
    mov cr4, eax
    mov ecx, 0xC0000080     /* EFER */
    rdmsr
    or eax, 0x100           /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80000001      /* PG | PE */
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    push 0x08
    mov eax, offset long_mode
    push eax
    retf

    .code64
long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset boot_stack_top
    xor ebp, ebp
    mov edi, esi
    call {main}
4:
    hlt
    jmp 4b

    .section .rodata
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt

    .section .bss
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
boot_stack:
    .skip {stack}
boot_stack_top:
"#,
    main = sym crate::kernel_main,
    stack = const STACK_SIZE,
);
