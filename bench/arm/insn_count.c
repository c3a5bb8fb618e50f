/* insn_count.c - a qemu-user TCG plugin that counts the guest instructions a program executes between two
 * marker syscalls, and (mix=1) which instructions they were.
 *
 * Counting: each translated block adds its instruction count to one counter when it runs (an inline add, so the
 * count is exact for one guest thread; clone() calls are reported so a second thread is noticed).
 * Markers: the guest calls getpid with arguments (getpid ignores them): syscall(172, 0xC0FFEE, id). id 1000
 * starts the region, 1001 ends it; the plugin writes "region <instructions>" and, with mix=1, one line
 * "op <mnemonic> <count>" per mnemonic executed in the region (".v" appended when an operand is a vector
 * register: "fmla.v" is the NEON form, "fmadd" the scalar one).
 * With mix=1 it also writes "block <guest address> <instructions> <runs>" for every translated block that ran in
 * the region, which bench/arm/insn.py attributes to the functions of the loaded libraries (/proc/self/maps).
 * Options: out=FILE (default stderr), mix=0|1, arch=aarch64|x86_64 (default aarch64; on x86_64 the marker is
 * syscall(39 = getpid, 0xC0FFEE, id) and a vector instruction gets ".x", ".y" or ".z" after its mnemonic by the
 * widest of its xmm / ymm / zmm operands).   Build: gcc -O2 -shared -fPIC -o insn_count.so insn_count.c
 * Written for qemu 7.2's plugin API (version 1); the declarations it needs are in qemu_plugin_api.h.
 */
#include "qemu_plugin_api.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

enum { SYS_GETPID_AARCH64 = 172, SYS_CLONE_AARCH64 = 220, SYS_CLONE3 = 435, SYS_GETPID_X86_64 = 39,
       SYS_CLONE_X86_64 = 56 };
static int x86; /* arch=x86_64 */
static const uint64_t MARKER = 0xC0FFEE;
enum { REGION_START = 1000, REGION_END = 1001 };

static FILE *report;
static int want_mix;
static uint64_t executed;       /* all guest instructions so far */
static uint64_t region_start;   /* `executed` at the start marker */
static uint64_t clones;

/* One translated block: how often it ran and the mnemonic id of each of its instructions. */
struct block {
  uint64_t runs;
  uint64_t runs_at_start;
  uint64_t vaddr;
  uint32_t n;
  uint16_t *mnemonic;
};
static struct block **blocks;
static size_t n_blocks, cap_blocks;

/* Mnemonic strings, interned in a fixed open-addressing table (ids fit uint16_t). */
#define MNEMONIC_SLOTS 4096
static char *mnemonics[MNEMONIC_SLOTS];

static uint16_t intern(const char *text) {
  uint32_t h = 2166136261u;
  for (const unsigned char *p = (const unsigned char *)text; *p; ++p) h = (h ^ *p) * 16777619u;
  for (uint32_t probe = 0; probe < MNEMONIC_SLOTS; ++probe) {
    uint32_t slot = (h + probe) % MNEMONIC_SLOTS;
    if (mnemonics[slot] == NULL) mnemonics[slot] = strdup(text);
    if (strcmp(mnemonics[slot], text) == 0) return (uint16_t)slot;
  }
  return 0; /* table full: lumped together (never seen: aarch64 has fewer mnemonics) */
}

static int is_vector_operand(const char *s) {
  /* "v12.4s", "v0.16b", "v3.s[1]": a v, digits, then a dot */
  if (*s != 'v' || s[1] < '0' || s[1] > '9') return 0;
  ++s;
  while (*s >= '0' && *s <= '9') ++s;
  return *s == '.';
}

/* qemu 7.2's disassembler prints the Armv8.2+ dot-product, FP16 vector and Armv8.6 matrix-multiply instructions as
 * ".byte": name them from their encodings (Arm ARM, "Advanced SIMD three same (extra)", "three same (FP16)" and
 * "vector x indexed element"). */
static const char *dot_product_name(uint32_t w) {
  static const struct { uint32_t mask, value; const char *name; } forms[] = {
      {0xBFE0FC00u, 0x0E809400u, "sdot.v"},  {0xBFE0FC00u, 0x2E809400u, "udot.v"},   /* vector */
      {0xBFC0F400u, 0x0F80E000u, "sdot.v"},  {0xBFC0F400u, 0x2F80E000u, "udot.v"},   /* by element */
      {0xBFE0FC00u, 0x0E809C00u, "usdot.v"}, {0xBFC0F400u, 0x0F80F000u, "usdot.v"},  /* i8mm */
      {0xBFC0F400u, 0x0F00F000u, "sudot.v"}, {0xFFE0FC00u, 0x4E80A400u, "smmla.v"},
      {0xFFE0FC00u, 0x6E80A400u, "ummla.v"}, {0xFFE0FC00u, 0x4E80AC00u, "usmmla.v"},
      /* Armv8.2 FP16 vector arithmetic (arm{fp16=true}), "three same (FP16)" and "by element" (size 00): `.h` */
      {0xBFE0FC00u, 0x0E400C00u, "fmla.h"},  {0xBFE0FC00u, 0x0EC00C00u, "fmls.h"},
      {0xBFE0FC00u, 0x0E401400u, "fadd.h"},  {0xBFE0FC00u, 0x0EC01400u, "fsub.h"},
      {0xBFE0FC00u, 0x2E401C00u, "fmul.h"},  {0xBFE0FC00u, 0x2E403C00u, "fdiv.h"},
      {0xBFE0FC00u, 0x0E403400u, "fmax.h"},  {0xBFE0FC00u, 0x0EC03400u, "fmin.h"},
      {0xBFE0FC00u, 0x0E400400u, "fmaxnm.h"}, {0xBFE0FC00u, 0x0EC00400u, "fminnm.h"},
      {0xBFE0FC00u, 0x2E401400u, "faddp.h"}, {0xBFE0FC00u, 0x2E403400u, "fmaxp.h"},
      {0xBFC0F400u, 0x0F001000u, "fmla.h"},  {0xBFC0F400u, 0x0F005000u, "fmls.h"},
      {0xBFC0F400u, 0x0F009000u, "fmul.h"},
  };
  for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); ++i)
    if ((w & forms[i].mask) == forms[i].value) return forms[i].name;
  return NULL;
}

/* The mnemonic of disassembly `text` into `key` (room left for a 2-character suffix); returns the operands. */
static const char *mnemonic(const char *text, char *key, size_t size, size_t *len) {
  const char *p = text;
  *len = 0;
  while (*p == ' ' || *p == '\t') ++p;
  while (*p && *p != ' ' && *p != '\t' && *len < size - 3) key[(*len)++] = *p++;
  return p;
}

static uint16_t classify_x86(struct qemu_plugin_insn *insn) {
  char *text = qemu_plugin_insn_disas(insn);
  char key[48];
  size_t len;
  const char *p = mnemonic(text, key, sizeof(key), &len);
  char width = 0;
  if (strstr(p, "%zmm")) width = 'z';
  else if (strstr(p, "%ymm")) width = 'y';
  else if (strstr(p, "%xmm")) width = 'x';
  if (width) {
    key[len++] = '.';
    key[len++] = width;
  }
  key[len] = '\0';
  free(text);
  return intern(key);
}

static uint16_t classify(struct qemu_plugin_insn *insn) {
  if (x86) return classify_x86(insn);
  if (qemu_plugin_insn_size(insn) == 4) {
    uint32_t word;
    memcpy(&word, qemu_plugin_insn_data(insn), 4); /* little-endian guest on a little-endian host */
    const char *name = dot_product_name(word);
    if (name) return intern(name);
  }
  char *text = qemu_plugin_insn_disas(insn);
  char key[48];
  size_t len;
  const char *p = mnemonic(text, key, sizeof(key), &len);
  int vector = 0;
  for (const char *q = p; *q && !vector; ++q)
    if ((q[-1] == ' ' || q[-1] == ',' || q[-1] == '{') && is_vector_operand(q)) vector = 1;
  if (vector) {
    key[len++] = '.';
    key[len++] = 'v';
  }
  key[len] = '\0';
  free(text);
  return intern(key);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  size_t n = qemu_plugin_tb_n_insns(tb);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, n);
  if (!want_mix) return;
  struct block *b = calloc(1, sizeof(*b));
  b->n = (uint32_t)n;
  b->vaddr = qemu_plugin_tb_vaddr(tb);
  b->mnemonic = malloc(n * sizeof(uint16_t) + 1);
  for (size_t i = 0; i < n; ++i) b->mnemonic[i] = classify(qemu_plugin_tb_get_insn(tb, i));
  if (n_blocks == cap_blocks) {
    cap_blocks = cap_blocks ? cap_blocks * 2 : 1 << 15;
    blocks = realloc(blocks, cap_blocks * sizeof(*blocks));
  }
  b->runs_at_start = 0;
  blocks[n_blocks++] = b;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->runs, 1);
}

static void write_mix(void) {
  static uint64_t per_mnemonic[MNEMONIC_SLOTS];
  memset(per_mnemonic, 0, sizeof(per_mnemonic));
  for (size_t i = 0; i < n_blocks; ++i) {
    uint64_t runs = blocks[i]->runs - blocks[i]->runs_at_start;
    if (!runs) continue;
    fprintf(report, "block 0x%" PRIx64 " %u %" PRIu64 "\n", blocks[i]->vaddr, blocks[i]->n, runs);
    for (uint32_t k = 0; k < blocks[i]->n; ++k) per_mnemonic[blocks[i]->mnemonic[k]] += runs;
  }
  for (int s = 0; s < MNEMONIC_SLOTS; ++s)
    if (per_mnemonic[s]) fprintf(report, "op %s %" PRIu64 "\n", mnemonics[s], per_mnemonic[s]);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
  (void)id, (void)vcpu, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
  if (num == (x86 ? SYS_CLONE_X86_64 : SYS_CLONE_AARCH64) || num == SYS_CLONE3) {
    ++clones;
    return;
  }
  if (num != (x86 ? SYS_GETPID_X86_64 : SYS_GETPID_AARCH64) || a1 != MARKER) return;
  if (a2 == REGION_START) {
    region_start = executed;
    for (size_t i = 0; i < n_blocks; ++i) blocks[i]->runs_at_start = blocks[i]->runs;
  } else if (a2 == REGION_END) {
    fprintf(report, "region %" PRIu64 "\n", executed - region_start);
    if (want_mix) write_mix();
    fflush(report);
  }
}

static void on_exit_(qemu_plugin_id_t id, void *unused) {
  (void)id, (void)unused;
  fprintf(report, "total %" PRIu64 "\nclones %" PRIu64 "\n", executed, clones);
  fflush(report);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  (void)info;
  report = stderr;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "out=", 4) == 0) {
      report = fopen(argv[i] + 4, "w");
      if (report == NULL) return -1;
    } else if (strncmp(argv[i], "mix=", 4) == 0) {
      want_mix = atoi(argv[i] + 4);
    } else if (strcmp(argv[i], "arch=x86_64") == 0 || strcmp(argv[i], "arch=aarch64") == 0) {
      x86 = argv[i][5] == 'x';
    } else {
      fprintf(stderr, "insn_count: unknown option '%s' (out=FILE, mix=0|1, arch=aarch64|x86_64)\n", argv[i]);
      return -1;
    }
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_atexit_cb(id, on_exit_, NULL);
  return 0;
}
