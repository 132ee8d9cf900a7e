"""SASS reading (`fxforge.codegen.sass`) on a fixed listing (no compile): the main loop body and the
instruction counts. The per-weight count of a real decode kernel is tested in test_qlinear_decode.py."""

from __future__ import annotations

from fxforge.codegen import sass

LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                       /* 0x00000a0000017a02 */
        /*0010*/                   ISETP.GE.AND P0, PT, R2, 0x1, PT ;           /* 0x0000000102007c0c */
        /*0020*/              @!P0 BRA 0x90 ;                                   /* 0x0000006000008947 */
        /*0030*/                   LOP3.LUT R4, R3, 0xf000f, RZ, 0xc0, !PT ;    /* 0x000f000f03047812 */
        /*0040*/                   NOP ;                                        /* 0x0000000000007918 */
        /*0050*/                   @!UPT UIADD3 URZ, URZ, URZ, URZ ;            /* 0x0000003f3f3ff290 */
        /*0060*/                   HMMA.16816.F32 R8, R4, R6, R8 ;              /* 0x000000060408723c */
        /*0070*/               @P1 BRA 0x30 ;                                   /* 0xffffffb000001947 */
        /*0080*/                   STG.E [R2.64], R8 ;                          /* 0x0000000802007986 */
        /*0090*/                   EXIT ;                                       /* 0x000000000000794d */
        /*00a0*/                   BRA 0xa0;                                    /* 0xfffffff000007947 */
"""


def test_main_loop_is_the_backward_branch_body_without_padding():
    body = sass.main_loop(LISTING)
    assert [b.split()[0] for b in body] == ["LOP3.LUT", "HMMA.16816.F32", "@P1"]
    # the self-branch at the end (`BRA 0xa0` to itself) is not a loop body of any length worth taking
    assert len(sass.instructions(LISTING)) == 9 and len(sass.instructions(LISTING, drop_padding=False)) == 10


def test_no_loop_gives_empty_body():
    straight = "\n".join(ln for ln in LISTING.splitlines() if "@P1 BRA" not in ln and "BRA 0xa0" not in ln)
    assert sass.main_loop(straight) == []


def test_main_loop_is_the_mma_loop_not_a_longer_row_loop():
    """A GEMM with a row loop before its K loop (the decode kernel's norm / E4M3 prologue): the K loop is the main one."""
    row_loop = "\n".join(f"        /*{0x100 + 16 * i:04x}*/                   LOP3.LUT R4, R3, 0xf, RZ, 0xc0, !PT ;"
                          for i in range(8)) + "\n        /*0180*/               @P2 BRA 0x100 ;"
    body = sass.main_loop(LISTING.replace("/*0090*/", "/*0090*/ ").replace("EXIT ;", "NOP ;") + row_loop)
    assert [b.split()[0] for b in body] == ["LOP3.LUT", "HMMA.16816.F32", "@P1"]
