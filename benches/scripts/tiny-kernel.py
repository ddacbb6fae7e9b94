#!/usr/bin/env python3
"""Writes a minimal ELF64 "kernel" for vm-runner benchmarks on hosts where Linux cannot boot.

tiny-kernel.py OUT poweroff|spin
  poweroff: writes the ACPI S5 value to the sleep control port (vm-runner exits 0)
  spin:     loops forever touching nothing (for memory measurements)
"""
import struct
import sys

out, kind = sys.argv[1], sys.argv[2]
code = {
    "poweroff": bytes([0x66, 0xBA, 0xB0, 0x03, 0xB0, 0x34, 0xEE, 0xF4]),
    "spin": bytes([0xEB, 0xFE]),
}[kind]
paddr = 0x200000
ehdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
    "<HHIQQQIHHHHHH", 2, 0x3E, 1, paddr, 64, 0, 0, 64, 56, 1, 0, 0, 0
)
phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, paddr, paddr, len(code), len(code), 0x1000)
with open(out, "wb") as f:
    f.write(ehdr + phdr + code)
