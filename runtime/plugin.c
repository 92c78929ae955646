/* Personal plugins: the SPA side network (also LST's), LoRA and Houlsby adapters (RUNTIME.md
 * §3-4). Loading, validation, the cloud part sent in UPLOAD, the generator with its classifier
 * calibration, and the per-token math. The file format is docs/plugin-format.md.
 *
 * Every plugin is described by a small table of "fields" (one per struct member: in_w, tap_b,
 * qa, ...), each a matrix or bias, global or one per block. Loading, writing, generating and
 * fingerprinting all walk that table in one canonical order, so the four can never disagree
 * about names, shapes or which tensors a cloud part holds. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/engine.h"
#include "spa/gguf.h"
#include "spa/kernels.h"
#include "spa/model.h"
#include "spa/plugin.h"
#include "spa/rng.h"
#include "spa/tokenizer.h"

/* ---- names ---- */

static const char *const method_names[SPA_METHOD_COUNT] = { "base", "lora", "adapter", "lst",
							    "spa" };
static const char *const split_names[SPA_SPLIT_COUNT] = { "cloud-linear", "edge-all" };
static const char *const merge_names[SPA_MERGE_COUNT] = { "add", "replace" };
static const char *const kind_names[SPA_PLUGIN_KIND_COUNT] = { "side", "lora", "adapter" };
static const char *const part_names[2] = { "full", "cloud" };

static int name_find(const char *const *names, int n, const char *s)
{
	if (!s)
		return -SPA_EUSAGE;
	for (int i = 0; i < n; i++)
		if (strcmp(names[i], s) == 0)
			return i;
	return -SPA_EUSAGE;
}

const char *spa_method_name(enum spa_method m)
{
	return (unsigned)m < SPA_METHOD_COUNT ? method_names[m] : "?";
}

int spa_method_from_name(const char *s)
{
	return name_find(method_names, SPA_METHOD_COUNT, s);
}

const char *spa_split_name(enum spa_split s)
{
	return (unsigned)s < SPA_SPLIT_COUNT ? split_names[s] : "?";
}

int spa_split_from_name(const char *s)
{
	return name_find(split_names, SPA_SPLIT_COUNT, s);
}

const char *spa_merge_name(enum spa_merge m)
{
	return (unsigned)m < SPA_MERGE_COUNT ? merge_names[m] : "?";
}

int spa_merge_from_name(const char *s)
{
	return name_find(merge_names, SPA_MERGE_COUNT, s);
}

const char *spa_plugin_kind_name(enum spa_plugin_kind k)
{
	return (unsigned)k < SPA_PLUGIN_KIND_COUNT ? kind_names[k] : "?";
}

int spa_method_plugin_kind(enum spa_method m)
{
	switch (m) {
	case SPA_METHOD_LORA:
		return SPA_PLUGIN_LORA;
	case SPA_METHOD_ADAPTER:
		return SPA_PLUGIN_ADAPTER;
	case SPA_METHOD_LST:
	case SPA_METHOD_SPA:
		return SPA_PLUGIN_SIDE;
	default:
		return -SPA_EUSAGE;
	}
}

bool spa_method_is_side(enum spa_method m)
{
	return m == SPA_METHOD_LST || m == SPA_METHOD_SPA;
}

/* ---- the field table ---- */

/* Limits a plugin header must respect (beyond them the file is refused, so that a damaged
 * header cannot ask for absurd allocations or loops). */
#define PLUGIN_MAX_RANK 4096u
#define PLUGIN_MAX_LAYERS 4096u
#define PLUGIN_MAX_EMBD (1u << 20)

/* Which parts hold a field: every field is in a full plugin; these bits say which cloud
 * splits' parts hold it too. */
#define IN_CLOUD_LINEAR (1u << SPA_SPLIT_CLOUD_LINEAR)
#define IN_EDGE_ALL (1u << SPA_SPLIT_EDGE_ALL)

enum field_group { GROUP_HEAD, GROUP_BLOCK, GROUP_TAIL };

struct field {
	float **slot;      /* the struct member it fills */
	const char *fmt;   /* tensor name; "%u" is the block for GROUP_BLOCK */
	enum field_group group;
	uint32_t cols;     /* GGUF ne[0] */
	uint32_t rows;     /* GGUF ne[1]; 0 for a bias (1-D, ne[0] = cols) */
	unsigned parts;    /* IN_CLOUD_LINEAR | IN_EDGE_ALL */
};

#define MAX_FIELDS 16

/* The fields of plugin p, in canonical order: head fields, then per block the block fields,
 * then tail fields. Shapes come from p's kind, L, H, kv_dim and rank. */
static int plugin_fields(struct spa_plugin *p, struct field *f)
{
	const uint32_t H = p->n_embd, r = p->rank, kv = p->kv_dim;
	const unsigned CL = IN_CLOUD_LINEAR, BOTH = IN_CLOUD_LINEAR | IN_EDGE_ALL;
	int n = 0;
#define FIELD(s, name, grp, c, rw, pt) \
	f[n++] = (struct field){ .slot = (s), .fmt = (name), .group = (grp), .cols = (c), \
				 .rows = (rw), .parts = (pt) }
	switch (p->kind) {
	case SPA_PLUGIN_SIDE:
		FIELD(&p->in_w, "side.in.weight", GROUP_HEAD, H, r, CL);
		FIELD(&p->in_b, "side.in.bias", GROUP_HEAD, r, 0, CL);
		FIELD(&p->tap_w, "side.blk.%u.tap.weight", GROUP_BLOCK, H, r, CL);
		FIELD(&p->tap_b, "side.blk.%u.tap.bias", GROUP_BLOCK, r, 0, CL);
		FIELD(&p->up_w, "side.blk.%u.up.weight", GROUP_BLOCK, r, H, 0);
		FIELD(&p->up_b, "side.blk.%u.up.bias", GROUP_BLOCK, H, 0, 0);
		FIELD(&p->down_w, "side.blk.%u.down.weight", GROUP_BLOCK, H, r, 0);
		FIELD(&p->down_b, "side.blk.%u.down.bias", GROUP_BLOCK, r, 0, 0);
		FIELD(&p->out_w, "side.out.weight", GROUP_TAIL, r, H, CL);
		FIELD(&p->out_b, "side.out.bias", GROUP_TAIL, H, 0, CL);
		FIELD(&p->cls_w, "side.cls.weight", GROUP_TAIL, H, 2, BOTH);
		FIELD(&p->cls_b, "side.cls.bias", GROUP_TAIL, 2, 0, BOTH);
		break;
	case SPA_PLUGIN_LORA:
		FIELD(&p->qa, "blk.%u.lora_q_a", GROUP_BLOCK, H, r, 0);
		FIELD(&p->qb, "blk.%u.lora_q_b", GROUP_BLOCK, r, H, 0);
		FIELD(&p->va, "blk.%u.lora_v_a", GROUP_BLOCK, H, r, 0);
		FIELD(&p->vb, "blk.%u.lora_v_b", GROUP_BLOCK, r, kv, 0);
		break;
	case SPA_PLUGIN_ADAPTER:
		FIELD(&p->ad_dn_w[0], "blk.%u.adapter_attn.down.weight", GROUP_BLOCK, H, r, 0);
		FIELD(&p->ad_dn_b[0], "blk.%u.adapter_attn.down.bias", GROUP_BLOCK, r, 0, 0);
		FIELD(&p->ad_up_w[0], "blk.%u.adapter_attn.up.weight", GROUP_BLOCK, r, H, 0);
		FIELD(&p->ad_up_b[0], "blk.%u.adapter_attn.up.bias", GROUP_BLOCK, H, 0, 0);
		FIELD(&p->ad_dn_w[1], "blk.%u.adapter_ffn.down.weight", GROUP_BLOCK, H, r, 0);
		FIELD(&p->ad_dn_b[1], "blk.%u.adapter_ffn.down.bias", GROUP_BLOCK, r, 0, 0);
		FIELD(&p->ad_up_w[1], "blk.%u.adapter_ffn.up.weight", GROUP_BLOCK, r, H, 0);
		FIELD(&p->ad_up_b[1], "blk.%u.adapter_ffn.up.bias", GROUP_BLOCK, H, 0, 0);
		break;
	default:
		break;
	}
#undef FIELD
	return n;
}

/* Elements of one tensor of a field, and of the whole field (L of them for a block field). */
static uint64_t field_elems(const struct field *f)
{
	return (uint64_t)f->cols * (f->rows ? f->rows : 1);
}

static uint64_t field_total(const struct field *f, uint32_t L)
{
	return field_elems(f) * (f->group == GROUP_BLOCK ? L : 1);
}

/* Whether a field is held by plugin part (part, split). */
static bool field_held(const struct field *f, enum spa_plugin_part part, int split)
{
	return part == SPA_PART_FULL || (f->parts & (1u << split));
}

/* One tensor in canonical order: field index and block (0 for global fields). */
struct tensor_ref {
	int field;
	uint32_t block;
};

/* The tensors held by (part, split), in canonical order, into refs (NULL: count only). */
static uint64_t plugin_tensor_list(const struct field *f, int nf, uint32_t L,
				   enum spa_plugin_part part, int split, struct tensor_ref *refs)
{
	uint64_t n = 0;
	for (int g = GROUP_HEAD; g <= GROUP_TAIL; g++) {
		uint32_t nb = g == GROUP_BLOCK ? L : 1;
		for (uint32_t b = 0; b < nb; b++)
			for (int i = 0; i < nf; i++) {
				if ((int)f[i].group != g || !field_held(&f[i], part, split))
					continue;
				if (refs)
					refs[n] = (struct tensor_ref){ i, b };
				n++;
			}
	}
	return n;
}

static void tensor_name(const struct field *f, uint32_t block, char *buf, size_t size)
{
	if (f->group == GROUP_BLOCK)
		snprintf(buf, size, f->fmt, block);
	else
		snprintf(buf, size, "%s", f->fmt);
}

static float *tensor_data(const struct field *f, uint32_t block)
{
	return *f->slot + (uint64_t)block * field_elems(f);
}

/* Give every field held by (part, split) its place in one 64-byte aligned allocation (each
 * field starts on a 64-byte boundary for the vector kernels); the others stay NULL. */
static int plugin_alloc(struct spa_plugin *p, int split)
{
	struct field f[MAX_FIELDS];
	int nf = plugin_fields(p, f);
	uint64_t total = 0;
	for (int i = 0; i < nf; i++) {
		*f[i].slot = NULL;
		if (field_held(&f[i], p->part, split))
			total += (field_total(&f[i], p->n_layers) + 15) & ~(uint64_t)15;
	}
	if (total > SIZE_MAX / sizeof(float) - 64)
		return -ENOMEM;
	size_t size = total ? (size_t)total * sizeof(float) : 64;
	p->mem = aligned_alloc(64, size);
	if (!p->mem)
		return -ENOMEM;
	memset(p->mem, 0, size);
	float *at = p->mem;
	for (int i = 0; i < nf; i++) {
		if (!field_held(&f[i], p->part, split))
			continue;
		*f[i].slot = at;
		at += (field_total(&f[i], p->n_layers) + 15) & ~(uint64_t)15;
	}
	return 0;
}

/* ---- fingerprints ---- */

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t fnv1a(uint64_t h, const void *data, size_t size)
{
	const uint8_t *b = data;
	for (size_t i = 0; i < size; i++) {
		h ^= b[i];
		h *= FNV_PRIME;
	}
	return h;
}

static bool fingerprint_valid(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
			return false;
	return n == 16;
}

/* ---- loading ---- */

void spa_plugin_destroy(struct spa_plugin *p)
{
	if (!p)
		return;
	spa_tokenizer_destroy(p->tok);
	free(p->mem);
	free(p);
}

static int get_u32_req(const struct spa_gguf *g, const char *key, uint32_t *out,
		       struct spa_errbuf *err)
{
	int rc = spa_gguf_get_u32(g, key, out, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: key %s is missing; it is not a complete spa "
			       "plugin: remake it with `spa-gen plugin`", g->path, key);
	return rc < 0 ? -SPA_EMODEL : 0;
}

static int get_str_req(const struct spa_gguf *g, const char *key, const char **out,
		       struct spa_errbuf *err)
{
	int rc = spa_gguf_get_str(g, key, out, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: key %s is missing; it is not a complete spa "
			       "plugin: remake it with `spa-gen plugin`", g->path, key);
	return rc < 0 ? -SPA_EMODEL : 0;
}

/* Header keys into p (kind, part, shapes, base fingerprint); *split for a cloud part. */
static int load_header(struct spa_plugin *p, const struct spa_gguf *g, int *split,
		       struct spa_errbuf *err)
{
	const char *path = g->path, *s;
	int rc;

	rc = spa_gguf_get_str(g, "general.architecture", &s, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: no general.architecture key: this is not a spa "
			       "plugin; make one with `spa-gen plugin --base BASE`", path);
	if (rc < 0)
		return -SPA_EMODEL;
	if (strcmp(s, "spa-plugin") != 0)
		return spa_err(err, -SPA_EMODEL, "%s: general.architecture is \"%s\", not "
			       "\"spa-plugin\": this is not a spa plugin (a base model?); pass the "
			       "plugin made by `spa-gen plugin`", path, s);

	if ((rc = get_str_req(g, "spa.plugin.kind", &s, err)) < 0)
		return rc;
	rc = name_find(kind_names, SPA_PLUGIN_KIND_COUNT, s);
	if (rc < 0)
		return spa_err(err, -SPA_EMODEL, "%s: spa.plugin.kind is \"%s\"; expected side, lora "
			       "or adapter: remake the plugin with `spa-gen plugin`", path, s);
	p->kind = (enum spa_plugin_kind)rc;

	if ((rc = get_str_req(g, "spa.plugin.part", &s, err)) < 0)
		return rc;
	rc = name_find(part_names, 2, s);
	if (rc < 0)
		return spa_err(err, -SPA_EMODEL, "%s: spa.plugin.part is \"%s\"; expected full or "
			       "cloud: remake the plugin with `spa-gen plugin`", path, s);
	p->part = (enum spa_plugin_part)rc;

	if ((rc = get_u32_req(g, "spa.plugin.rank", &p->rank, err)) < 0 ||
	    (rc = get_u32_req(g, "spa.plugin.base.block_count", &p->n_layers, err)) < 0 ||
	    (rc = get_u32_req(g, "spa.plugin.base.embedding_length", &p->n_embd, err)) < 0 ||
	    (rc = get_u32_req(g, "spa.plugin.base.kv_length", &p->kv_dim, err)) < 0)
		return rc;
	if (p->rank < 1 || p->rank > PLUGIN_MAX_RANK)
		return spa_err(err, -SPA_EMODEL, "%s: spa.plugin.rank is %u, outside 1..%u: remake "
			       "the plugin with a sane --rank", path, p->rank, PLUGIN_MAX_RANK);
	if (p->n_layers < 1 || p->n_layers > PLUGIN_MAX_LAYERS || p->n_embd < 1 ||
	    p->n_embd > PLUGIN_MAX_EMBD || p->kv_dim < 1 || p->kv_dim > p->n_embd)
		return spa_err(err, -SPA_EMODEL, "%s: base shape L=%u H=%u kv_dim=%u is not sane "
			       "(want 1 <= L <= %u, 1 <= H <= %u, 1 <= kv_dim <= H): the file is "
			       "damaged; remake the plugin with `spa-gen plugin --base BASE`", path,
			       p->n_layers, p->n_embd, p->kv_dim, PLUGIN_MAX_LAYERS, PLUGIN_MAX_EMBD);

	if ((rc = get_str_req(g, "spa.plugin.base_fingerprint", &s, err)) < 0)
		return rc;
	if (!fingerprint_valid(s))
		return spa_err(err, -SPA_EMODEL, "%s: spa.plugin.base_fingerprint \"%.40s\" is not 16 "
			       "lowercase hex digits: remake the plugin with `spa-gen plugin --base "
			       "BASE`", path, s);
	memcpy(p->base_fingerprint, s, 17);

	*split = SPA_SPLIT_CLOUD_LINEAR;
	if (p->part == SPA_PART_CLOUD) {
		if (p->kind != SPA_PLUGIN_SIDE)
			return spa_err(err, -SPA_EMODEL, "%s: a cloud part of a %s plugin: only side "
				       "plugins have cloud parts; send the part written by "
				       "spa_plugin_write_cloud_part", path, kind_names[p->kind]);
		if ((rc = get_str_req(g, "spa.plugin.cloud_split", &s, err)) < 0)
			return rc;
		*split = name_find(split_names, SPA_SPLIT_COUNT, s);
		if (*split < 0)
			return spa_err(err, -SPA_EMODEL, "%s: spa.plugin.cloud_split is \"%s\"; expected "
				       "cloud-linear or edge-all: rewrite the cloud part", path, s);
		rc = spa_gguf_get_u64(g, "spa.plugin.n_params", &p->n_params, err);
		if (rc == -ENOENT)
			return spa_err(err, -SPA_EMODEL, "%s: key spa.plugin.n_params is missing from "
				       "the cloud part: rewrite it with spa_plugin_write_cloud_part", path);
		if (rc < 0)
			return -SPA_EMODEL;
		if ((rc = get_str_req(g, "spa.plugin.fingerprint", &s, err)) < 0)
			return rc;
		if (!fingerprint_valid(s))
			return spa_err(err, -SPA_EMODEL, "%s: spa.plugin.fingerprint \"%.40s\" is not 16 "
				       "lowercase hex digits: rewrite the cloud part", path, s);
		memcpy(p->fingerprint, s, 17);
	}
	return 0;
}

static int load_gguf(struct spa_plugin **out, struct spa_gguf *g, struct spa_errbuf *err)
{
	const char *path = g->path;
	struct spa_plugin *p = calloc(1, sizeof *p);
	struct tensor_ref *refs = NULL;
	const struct spa_gguf_tensor **gts = NULL;
	float **dst_by_file = NULL;
	struct field f[MAX_FIELDS];
	int split = SPA_SPLIT_CLOUD_LINEAR, rc;

	if (!p)
		return -ENOMEM;
	if ((rc = load_header(p, g, &split, err)) < 0)
		goto err;

	/* The tensors this part must hold, exactly: no more (a cloud part must not carry the
	 * edge's private weights; a stray tensor means a file from something else), no less. */
	int nf = plugin_fields(p, f);
	uint64_t nt = plugin_tensor_list(f, nf, p->n_layers, p->part, split, NULL);
	if (g->n_tensors != nt) {
		rc = spa_err(err, -SPA_EMODEL, "%s: %llu tensors where this %s plugin (%s%s%s, L=%u) "
			     "holds %llu: remake the plugin with `spa-gen plugin --base BASE`", path,
			     (unsigned long long)g->n_tensors, kind_names[p->kind],
			     part_names[p->part], p->part == SPA_PART_CLOUD ? " part for " : "",
			     p->part == SPA_PART_CLOUD ? split_names[split] : "", p->n_layers,
			     (unsigned long long)nt);
		/* Say which one is missing when one is: more useful than a count. */
		refs = calloc(nt, sizeof *refs);
		if (refs) {
			plugin_tensor_list(f, nf, p->n_layers, p->part, split, refs);
			for (uint64_t t = 0; t < nt; t++) {
				char name[96];
				tensor_name(&f[refs[t].field], refs[t].block, name, sizeof name);
				if (!spa_gguf_find_tensor(g, name)) {
					rc = spa_err(err, -SPA_EMODEL, "%s: tensor %s is missing: the plugin "
						     "is incomplete; remake it with `spa-gen plugin "
						     "--base BASE`", path, name);
					break;
				}
			}
		}
		goto err;
	}
	refs = calloc(nt ? nt : 1, sizeof *refs);
	gts = calloc(nt ? nt : 1, sizeof *gts);
	dst_by_file = calloc(nt ? nt : 1, sizeof *dst_by_file);
	if (!refs || !gts || !dst_by_file) {
		rc = -ENOMEM;
		goto err;
	}
	plugin_tensor_list(f, nf, p->n_layers, p->part, split, refs);

	uint64_t n_params = 0;
	for (uint64_t t = 0; t < nt; t++) {
		const struct field *fd = &f[refs[t].field];
		char name[96];
		tensor_name(fd, refs[t].block, name, sizeof name);
		const struct spa_gguf_tensor *gt = spa_gguf_find_tensor(g, name);
		if (!gt) {
			rc = spa_err(err, -SPA_EMODEL, "%s: tensor %s is missing: the plugin is "
				     "incomplete; remake it with `spa-gen plugin --base BASE`", path,
				     name);
			goto err;
		}
		if (gt->type != SPA_TYPE_F32) {
			const char *tn = spa_dtype_name(gt->type);
			rc = spa_err(err, -SPA_EMODEL, "%s: tensor %s is %s; plugin tensors must be "
				     "f32: remake the plugin with `spa-gen plugin`", path, name,
				     tn ? tn : "of an unknown type");
			goto err;
		}
		uint32_t want_dims = fd->rows ? 2 : 1;
		uint64_t want1 = fd->rows ? fd->rows : 1;
		if (gt->n_dims != want_dims || gt->ne[0] != fd->cols || gt->ne[1] != want1 ||
		    gt->ne[2] != 1 || gt->ne[3] != 1) {
			char want[64];
			if (fd->rows)
				snprintf(want, sizeof want, "{%u, %u}", fd->cols, fd->rows);
			else
				snprintf(want, sizeof want, "{%u}", fd->cols);
			rc = spa_err(err, -SPA_EMODEL, "%s: tensor %s has shape {%llu, %llu, %llu, %llu} "
				     "(%u dims); a %s plugin of rank %u for H=%u kv_dim=%u needs %s: "
				     "remake the plugin with `spa-gen plugin --base BASE`", path, name,
				     (unsigned long long)gt->ne[0], (unsigned long long)gt->ne[1],
				     (unsigned long long)gt->ne[2], (unsigned long long)gt->ne[3],
				     gt->n_dims, kind_names[p->kind], p->rank, p->n_embd, p->kv_dim,
				     want);
			goto err;
		}
		n_params += gt->n_elems;
		gts[t] = gt;
	}
	if (p->part == SPA_PART_FULL)
		p->n_params = n_params;

	/* Shapes checked against tensors the reader found inside the file: the allocation below
	 * is no larger than the file's data. */
	if ((rc = plugin_alloc(p, split)) < 0) {
		spa_err(err, rc, "%s: out of memory for the plugin's tensors", path);
		goto err;
	}
	/* Copy each tensor to its slot, hashing in file order (the tensor table). */
	for (uint64_t t = 0; t < nt; t++) {
		uint64_t i = (uint64_t)(gts[t] - g->tensors);
		if (i < g->n_tensors)
			dst_by_file[i] = tensor_data(&f[refs[t].field], refs[t].block);
	}
	uint64_t h = FNV_OFFSET;
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct spa_gguf_tensor *gt = &g->tensors[i];
		float *dst = dst_by_file[i];
		if (!dst) {
			/* Only a duplicated name could leave one unmapped (and make another missing,
			 * refused above): never write through NULL. */
			rc = spa_err(err, -SPA_EMODEL, "%s: unexpected tensor %s: remake the plugin "
				     "with `spa-gen plugin --base BASE`", path, gt->name.data);
			goto err;
		}
		if (g->mem) {
			memcpy(dst, g->mem + g->data_offset + gt->offset, gt->size);
		} else if ((rc = spa_gguf_pread(g, gt->offset, dst, gt->size, err)) < 0) {
			goto err;
		}
		h = fnv1a(h, dst, gt->size);
	}
	if (p->part == SPA_PART_FULL)
		snprintf(p->fingerprint, sizeof p->fingerprint, "%016llx", (unsigned long long)h);

	if (p->part == SPA_PART_FULL) {
		if (!spa_gguf_find_kv(g, "tokenizer.ggml.model")) {
			rc = spa_err(err, -SPA_EMODEL, "%s: the plugin carries no tokenizer "
				     "(tokenizer.ggml.*): the edge needs its base's tokenizer; remake "
				     "the plugin with `spa-gen plugin --base BASE`", path);
			goto err;
		}
		struct spa_errbuf terr = { { 0 } };
		if ((rc = spa_tokenizer_load(&p->tok, g, &terr)) < 0) {
			rc = spa_err(err, -SPA_EMODEL, "%s: its tokenizer does not load (%s); remake the "
				     "plugin with `spa-gen plugin --base BASE`", path, terr.msg);
			goto err;
		}
	}
	free(refs);
	free(gts);
	free(dst_by_file);
	*out = p;
	return 0;
err:
	free(refs);
	free(gts);
	free(dst_by_file);
	spa_plugin_destroy(p);
	return rc;
}

int spa_plugin_load(struct spa_plugin **out, const char *path, struct spa_errbuf *err)
{
	struct spa_gguf *g;
	int rc = spa_gguf_open(&g, path, err);
	if (rc < 0)
		return rc;
	rc = load_gguf(out, g, err);
	spa_gguf_close(g);
	return rc;
}

int spa_plugin_load_mem(struct spa_plugin **out, const void *buf, size_t size,
			struct spa_errbuf *err)
{
	struct spa_gguf *g;
	int rc = spa_gguf_open_mem(&g, buf, size, err);
	if (rc < 0)
		return rc;
	rc = load_gguf(out, g, err);
	spa_gguf_close(g);
	return rc;
}

int spa_plugin_check_base(const struct spa_plugin *p, const struct spa_model *m,
			  struct spa_errbuf *err)
{
	uint32_t kv = m->hp.n_kv_heads * m->hp.head_dim;
	if (strcmp(p->base_fingerprint, m->fingerprint) != 0)
		return spa_err(err, -SPA_EMISMATCH, "the plugin was made for the base with fingerprint "
			       "%s, but this base model's fingerprint is %s: make the plugin for this "
			       "base with `spa-gen plugin --base BASE`", p->base_fingerprint,
			       m->fingerprint);
	if (p->n_layers != m->hp.n_layers || p->n_embd != m->hp.n_embd || p->kv_dim != kv)
		return spa_err(err, -SPA_EMISMATCH, "the plugin was made for a base with L=%u H=%u "
			       "kv_dim=%u, but this base (fingerprint %s, the plugin's %s) has L=%u "
			       "H=%u kv_dim=%u: make the plugin for this base with `spa-gen plugin "
			       "--base BASE`", p->n_layers, p->n_embd, p->kv_dim, m->fingerprint,
			       p->base_fingerprint, m->hp.n_layers, m->hp.n_embd, kv);
	return 0;
}

/* ---- writing ---- */

/* Header keys common to full plugins and cloud parts. */
static int write_header(struct spa_gguf_writer *w, const struct spa_plugin *p,
			enum spa_plugin_part part)
{
	int rc;
	if ((rc = spa_gguf_writer_set_str(w, "general.architecture", "spa-plugin")) < 0 ||
	    (rc = spa_gguf_writer_set_str(w, "spa.plugin.kind", kind_names[p->kind])) < 0 ||
	    (rc = spa_gguf_writer_set_str(w, "spa.plugin.part", part_names[part])) < 0 ||
	    (rc = spa_gguf_writer_set_u32(w, "spa.plugin.rank", p->rank)) < 0 ||
	    (rc = spa_gguf_writer_set_str(w, "spa.plugin.base_fingerprint",
					  p->base_fingerprint)) < 0 ||
	    (rc = spa_gguf_writer_set_u32(w, "spa.plugin.base.block_count", p->n_layers)) < 0 ||
	    (rc = spa_gguf_writer_set_u32(w, "spa.plugin.base.embedding_length", p->n_embd)) < 0 ||
	    (rc = spa_gguf_writer_set_u32(w, "spa.plugin.base.kv_length", p->kv_dim)) < 0)
		return rc;
	return 0;
}

/* Add the tensors of (part, split) of p to w in canonical order (data borrowed from p). */
static int write_tensors(struct spa_gguf_writer *w, struct spa_plugin *p,
			 enum spa_plugin_part part, int split)
{
	struct field f[MAX_FIELDS];
	int nf = plugin_fields(p, f);
	for (int g = GROUP_HEAD; g <= GROUP_TAIL; g++) {
		uint32_t nb = g == GROUP_BLOCK ? p->n_layers : 1;
		for (uint32_t b = 0; b < nb; b++)
			for (int i = 0; i < nf; i++) {
				if ((int)f[i].group != g || !field_held(&f[i], part, split))
					continue;
				if (!*f[i].slot)
					return -SPA_EUSAGE;
				char name[96];
				tensor_name(&f[i], b, name, sizeof name);
				uint64_t ne[2] = { f[i].cols, f[i].rows };
				int rc = spa_gguf_writer_add_tensor(w, name, SPA_TYPE_F32,
								    f[i].rows ? 2 : 1, ne,
								    tensor_data(&f[i], b));
				if (rc < 0)
					return rc;
			}
	}
	return 0;
}

int spa_plugin_write_cloud_part(const struct spa_plugin *p, enum spa_split s, void **out,
				size_t *out_size, struct spa_errbuf *err)
{
	if (p->kind != SPA_PLUGIN_SIDE)
		return spa_err(err, -SPA_EUSAGE, "a %s plugin has no cloud part: only side plugins "
			       "(methods lst, spa) put weights on the cloud", kind_names[p->kind]);
	if ((unsigned)s >= SPA_SPLIT_COUNT)
		return spa_err(err, -SPA_EUSAGE, "unknown split %d: use cloud-linear or edge-all", s);

	/* The writer borrows tensor data through non-const pointers it never writes through. */
	struct spa_plugin *pp = (struct spa_plugin *)p;
	struct spa_gguf_writer *w;
	int rc = spa_gguf_writer_create(&w);
	if (rc < 0)
		return spa_err(err, rc, "out of memory writing the plugin's cloud part");
	if ((rc = write_header(w, p, SPA_PART_CLOUD)) < 0 ||
	    (rc = spa_gguf_writer_set_str(w, "spa.plugin.cloud_split", split_names[s])) < 0 ||
	    (rc = spa_gguf_writer_set_u64(w, "spa.plugin.n_params", p->n_params)) < 0 ||
	    (rc = spa_gguf_writer_set_str(w, "spa.plugin.fingerprint", p->fingerprint)) < 0) {
		spa_err(err, rc, "cannot build the plugin's cloud part: %s", spa_strerror(rc));
		goto out;
	}
	rc = write_tensors(w, pp, SPA_PART_CLOUD, s);
	if (rc == -SPA_EUSAGE) {
		spa_err(err, rc, "this plugin (part %s) lacks tensors the %s cloud part needs: write "
			"the cloud part from the full plugin", part_names[p->part], split_names[s]);
		goto out;
	}
	if (rc < 0) {
		spa_err(err, rc, "cannot build the plugin's cloud part: %s", spa_strerror(rc));
		goto out;
	}
	rc = spa_gguf_writer_write_mem(w, out, out_size, err);
out:
	spa_gguf_writer_destroy(w);
	return rc;
}

/* ---- the math (hot path: no allocation) ---- */

static inline void relu_inplace(float *x, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void spa_plugin_side_taps(const struct spa_plugin *p, const float *resid, float *taps)
{
	const uint32_t H = p->n_embd, r = p->rank;
	spa_matvec_f32(p->in_w, p->in_b, resid, taps, r, H);
	for (uint32_t i = 0; i < p->n_layers; i++)
		spa_matvec_f32(p->tap_w + (size_t)i * r * H, p->tap_b + (size_t)i * r,
			       resid + (size_t)(i + 1) * H, taps + (size_t)(i + 1) * r, r, H);
}

/* relu_s may alias taps[0..r) (side_full relies on it): t_in is read into s before relu_s is
 * first written, and the later taps are never written. */
void spa_plugin_side_chain(const struct spa_plugin *p, const float *taps, float *relu_s,
			   float *scratch)
{
	const uint32_t H = p->n_embd, r = p->rank;
	float *s = scratch;     /* r */
	float *u = scratch + r; /* H */
	float *d = relu_s;      /* r: D_i relu(U_i s) lives in the output until the end */
	memcpy(s, taps, r * sizeof *s);
	for (uint32_t i = 0; i < p->n_layers; i++) {
		const float *t = taps + (size_t)(i + 1) * r;
		relu_inplace(s, r);
		spa_matvec_f32(p->up_w + (size_t)i * H * r, p->up_b + (size_t)i * H, s, u, H, r);
		relu_inplace(u, H);
		spa_matvec_f32(p->down_w + (size_t)i * r * H, p->down_b + (size_t)i * r, u, d, r, H);
		/* The order of the sum is part of the format: (t_i + s) + D_i relu(U_i s). */
		for (uint32_t j = 0; j < r; j++)
			s[j] = (t[j] + s[j]) + d[j];
	}
	for (uint32_t j = 0; j < r; j++)
		relu_s[j] = s[j] > 0.0f ? s[j] : 0.0f;
}

/* The fused chain: one pass per block over the r-wide state: u = relu(U s + b_up) with the
 * bias and the relu applied as the kernels' rows kernels produce u (no second pass over the
 * H-wide vector), then s = (t + s) + (D u + b_down). Each element is the same dot call as in
 * spa_plugin_side_chain (spa_matvec_f32), so the bits are its bits, in every variant. */
size_t spa_plugin_side_chain_fused_scratch(const struct spa_plugin *p)
{
	/* s (r), u (H), D u (r) */
	return 2u * (size_t)p->rank + p->n_embd;
}

void spa_plugin_side_chain_fused(const struct spa_plugin *p, const float *taps, float *relu_s,
				 float *scratch)
{
	const uint32_t H = p->n_embd, r = p->rank;
	float *s = scratch, *u = scratch + r, *d = scratch + r + H;
	memcpy(s, taps, r * sizeof *s);
	for (uint32_t i = 0; i < p->n_layers; i++) {
		const float *t = taps + (size_t)(i + 1) * r;
		for (uint32_t j = 0; j < r; j++)
			s[j] = s[j] > 0.0f ? s[j] : 0.0f;
		spa_matvec_f32_relu(p->up_w + (size_t)i * H * r, p->up_b + (size_t)i * H, s, u, H, r);
		spa_matvec_f32(p->down_w + (size_t)i * r * H, p->down_b + (size_t)i * r, u, d, r, H);
		for (uint32_t j = 0; j < r; j++)
			s[j] = (t[j] + s[j]) + d[j];
	}
	for (uint32_t j = 0; j < r; j++)
		relu_s[j] = s[j] > 0.0f ? s[j] : 0.0f;
}

void spa_plugin_side_out(const struct spa_plugin *p, const float *relu_s, float *g)
{
	spa_matvec_f32(p->out_w, p->out_b, relu_s, g, p->n_embd, p->rank);
}

void spa_plugin_side_full(const struct spa_plugin *p, const float *resid, float *g,
			  float *scratch)
{
	const uint32_t r = p->rank;
	float *taps = scratch;                               /* (L+1) x r */
	float *chain = scratch + (size_t)(p->n_layers + 1) * r; /* r + H */
	/* relu(s) goes where t_in was (see side_chain): the same three calls the cloud and the
	 * edge make under cloud-linear, hence the same bits. */
	spa_plugin_side_taps(p, resid, taps);
	spa_plugin_side_chain(p, taps, taps, chain);
	spa_plugin_side_out(p, taps, g);
}

int spa_plugin_gate(const struct spa_plugin *p, const float *f, float *margin)
{
	float l[2];
	spa_matvec_f32(p->cls_w, p->cls_b, f, l, 2, p->n_embd);
	if (margin)
		*margin = l[1] - l[0];
	return l[1] > l[0] ? 1 : 0;
}

void spa_plugin_lora(const struct spa_plugin *p, uint32_t layer, uint32_t n_tok, const float *x,
		     float *dq, float *dv, float *scratch)
{
	const uint32_t H = p->n_embd, k = p->rank, kv = p->kv_dim;
	const float *qa = p->qa + (size_t)layer * k * H, *qb = p->qb + (size_t)layer * H * k;
	const float *va = p->va + (size_t)layer * k * H, *vb = p->vb + (size_t)layer * kv * k;
	for (uint32_t t = 0; t < n_tok; t++) {
		const float *xt = x + (size_t)t * H;
		spa_matvec_f32(qa, NULL, xt, scratch, k, H);
		spa_matvec_f32(qb, NULL, scratch, dq + (size_t)t * H, H, k);
		spa_matvec_f32(va, NULL, xt, scratch, k, H);
		spa_matvec_f32(vb, NULL, scratch, dv + (size_t)t * kv, kv, k);
	}
}

void spa_plugin_adapter(const struct spa_plugin *p, uint32_t layer, uint32_t which,
			uint32_t n_tok, const float *h, float *delta, float *scratch)
{
	const uint32_t H = p->n_embd, b = p->rank;
	const float *dn_w = p->ad_dn_w[which] + (size_t)layer * b * H;
	const float *dn_b = p->ad_dn_b[which] + (size_t)layer * b;
	const float *up_w = p->ad_up_w[which] + (size_t)layer * H * b;
	const float *up_b = p->ad_up_b[which] + (size_t)layer * H;
	for (uint32_t t = 0; t < n_tok; t++) {
		spa_matvec_f32(dn_w, dn_b, h + (size_t)t * H, scratch, b, H);
		relu_inplace(scratch, b);
		spa_matvec_f32(up_w, up_b, scratch, delta + (size_t)t * H, H, b);
	}
}

/* ---- the generator ---- */

/* A few plain English sentences: every synthetic and real tokenizer encodes them. */
static const char default_calib_prompt[] =
	"The quick brown fox jumps over the lazy dog. Once upon a time there was a little "
	"village by the sea, where the people worked hard and told stories in the evening. "
	"What is the weather like today? I think it will rain later, so take an umbrella.";

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

/* Run the base over the calibration positions (the prompt, then greedy tokens until n
 * positions), with the classifier bias at zero: margins[n] = (W_c f)[1] - (W_c f)[0], and the
 * mean squares of f and of W_out relu(s) (no bias) to scale W_out. */
static int calibrate_run(const struct spa_model *m, struct spa_plugin *p, const char *prompt,
			 uint32_t n, float *margins, double *f_ms, double *g_ms,
			 struct spa_errbuf *err)
{
	const uint32_t H = p->n_embd, r = p->rank, L = p->n_layers, V = m->hp.n_vocab;
	struct spa_context *e = NULL;
	size_t max_ids = strlen(prompt) + 8;
	int32_t *ids = malloc(max_ids * sizeof *ids);
	float *logits = malloc((size_t)V * sizeof *logits);
	float *scratch = malloc(((size_t)(L + 1) * r + r + H) * sizeof *scratch);
	float *g = malloc((size_t)H * sizeof *g);
	float *out_b = p->out_b;
	uint32_t n_ids = 0;
	double fs = 0, gs = 0;
	int rc;

	if (!ids || !logits || !scratch || !g) {
		rc = spa_err(err, -ENOMEM, "out of memory for the plugin calibration");
		goto out;
	}
	rc = spa_tokenizer_encode(m->tok, prompt, SPA_TOK_ADD_SPECIAL, ids, (uint32_t)max_ids,
				  &n_ids);
	if (rc < 0) {
		spa_err(err, rc, "cannot tokenize the calibration prompt: %s", spa_strerror(rc));
		goto out;
	}
	if (n_ids == 0) {
		rc = spa_err(err, -SPA_EUSAGE, "the calibration prompt gives no tokens: pass a "
			     "non-empty prompt");
		goto out;
	}
	rc = spa_context_create(&e, m, NULL, n, 1);
	if (rc < 0) {
		spa_err(err, rc, "cannot create the engine for the plugin calibration: %s",
			spa_strerror(rc));
		goto out;
	}
	p->out_b = NULL; /* measure W_out relu(s) alone */
	int32_t tok = ids[0];
	for (uint32_t pos = 0; pos < n; pos++) {
		if ((rc = spa_engine_forward(e, &tok, 1, NULL)) < 0) {
			spa_err(err, rc, "the base model failed during the plugin calibration: %s",
				spa_strerror(rc));
			goto out;
		}
		const float *f = spa_context_final(e);
		spa_plugin_gate(p, f, &margins[pos]);
		spa_plugin_side_full(p, spa_context_resid(e), g, scratch);
		for (uint32_t j = 0; j < H; j++) {
			fs += (double)f[j] * f[j];
			gs += (double)g[j] * g[j];
		}
		if (pos + 1 < n_ids) {
			tok = ids[pos + 1];
		} else if (pos + 1 < n) {
			spa_engine_logits(e, f, logits);
			tok = (int32_t)spa_argmax(logits, V);
		}
	}
	*f_ms = fs / ((double)n * H);
	*g_ms = gs / ((double)n * H);
	rc = 0;
out:
	p->out_b = out_b;
	spa_context_destroy(e);
	free(ids);
	free(logits);
	free(scratch);
	free(g);
	return rc;
}

/* The threshold q that puts round(fraction x n) of the margins strictly above it: halfway
 * between the neighbours that separate them, so that the rounding of the gate's own
 * arithmetic (W_c f + b_c) does not move a position across. Fractions 0 and 1 mean never and
 * always, on any input, not only on the calibration prompt. */
static float calibrate_threshold(float *m, uint32_t n, float fraction)
{
	if (fraction <= 0.0f)
		return 1e30f;
	if (fraction >= 1.0f)
		return -1e30f;
	qsort(m, n, sizeof *m, cmp_float);
	uint32_t k = (uint32_t)floor((double)fraction * n + 0.5); /* positions on the side path */
	if (k == 0)
		return m[n - 1] + fmaxf(1.0f, fabsf(m[n - 1]));
	if (k >= n)
		return m[0] - fmaxf(1.0f, fabsf(m[0]));
	float lo = m[n - k - 1], hi = m[n - k];
	return lo + (hi - lo) * 0.5f;
}

static void fill_uniform(struct spa_rng *rng, float *x, uint64_t n, float scale)
{
	for (uint64_t i = 0; i < n; i++)
		x[i] = spa_rng_uniform(rng) * scale;
}

/* The scale of each field's uniform init (RUNTIME.md's generator notes in plugin-format.md). */
static float field_scale(const struct spa_plugin *p, const struct field *f)
{
	const float bias = 0.02f;
	const float H = (float)p->n_embd, r = (float)p->rank;
	if (!f->rows)
		return f->slot == &p->cls_b ? 0.0f : bias;
	if (f->slot == &p->up_w)
		return sqrtf(3.0f / r) * 0.5f;
	if (f->slot == &p->down_w)
		return sqrtf(3.0f / H) * 0.5f;
	if (f->slot == &p->out_w || f->slot == &p->qb || f->slot == &p->vb ||
	    f->slot == &p->ad_up_w[0] || f->slot == &p->ad_up_w[1])
		return sqrtf(3.0f / r) * (p->kind == SPA_PLUGIN_SIDE ? 1.0f : 0.5f);
	return sqrtf(3.0f / H); /* in, tap, cls, lora A, adapter down: fan-in H */
}

int spa_plugin_generate(const struct spa_model *m, const struct spa_plugin_gen_params *gp,
			const char *path, struct spa_errbuf *err)
{
	const struct spa_hparams *hp = &m->hp;
	struct spa_plugin *p = NULL;
	struct spa_gguf_writer *w = NULL;
	float *margins = NULL;
	uint32_t n_calib = 0;
	int rc;

	if ((unsigned)gp->kind >= SPA_PLUGIN_KIND_COUNT)
		return spa_err(err, -SPA_EUSAGE, "unknown plugin kind %d: use side, lora or adapter",
			       (int)gp->kind);
	if (!m->tok)
		return spa_err(err, -SPA_EUSAGE, "the base model has no tokenizer to give the plugin: "
			       "use a base with tokenizer.ggml.* keys");
	uint32_t H = hp->n_embd, rank = gp->rank;
	if (rank == 0) {
		rank = gp->kind == SPA_PLUGIN_SIDE ? 32 : gp->kind == SPA_PLUGIN_LORA ? 8 : 16;
		if (gp->kind != SPA_PLUGIN_LORA && rank > H / 4)
			rank = H / 4 ? H / 4 : 1;
	}
	if (rank > PLUGIN_MAX_RANK)
		return spa_err(err, -SPA_EUSAGE, "rank %u is above %u: pass a smaller --rank", rank,
			       PLUGIN_MAX_RANK);
	if (!(gp->side_fraction <= 1.0f))
		return spa_err(err, -SPA_EUSAGE, "side fraction %g is above 1: pass a fraction in "
			       "[0, 1], or a negative one to leave the classifier uncalibrated",
			       (double)gp->side_fraction);

	p = calloc(1, sizeof *p);
	if (!p)
		return spa_err(err, -ENOMEM, "out of memory making the plugin");
	p->kind = gp->kind;
	p->part = SPA_PART_FULL;
	p->n_layers = hp->n_layers;
	p->n_embd = H;
	p->kv_dim = hp->n_kv_heads * hp->head_dim;
	p->rank = rank;
	memcpy(p->base_fingerprint, m->fingerprint, 17);
	if (p->n_layers < 1 || p->n_layers > PLUGIN_MAX_LAYERS || H < 1 || H > PLUGIN_MAX_EMBD ||
	    p->kv_dim < 1 || p->kv_dim > H) {
		rc = spa_err(err, -SPA_EUSAGE, "the base's shape L=%u H=%u kv_dim=%u is outside what "
			     "a plugin supports", p->n_layers, H, p->kv_dim);
		goto out;
	}
	if ((rc = plugin_alloc(p, SPA_SPLIT_CLOUD_LINEAR)) < 0) {
		spa_err(err, rc, "out of memory for the plugin's weights");
		goto out;
	}

	/* Weights in canonical tensor order, so one seed gives one plugin. */
	struct field f[MAX_FIELDS];
	int nf = plugin_fields(p, f);
	struct spa_rng rng;
	spa_rng_seed(&rng, gp->seed);
	for (int g = GROUP_HEAD; g <= GROUP_TAIL; g++) {
		uint32_t nb = g == GROUP_BLOCK ? p->n_layers : 1;
		for (uint32_t b = 0; b < nb; b++)
			for (int i = 0; i < nf; i++)
				if ((int)f[i].group == g)
					fill_uniform(&rng, tensor_data(&f[i], b), field_elems(&f[i]),
						     field_scale(p, &f[i]));
	}

	if (p->kind == SPA_PLUGIN_SIDE) {
		/* One pass of the base over a sample text both scales W_out (so that g is as
		 * large as f, and the side path visibly changes the output) and gives the margins
		 * that calibrate the classifier. */
		n_calib = gp->calib_tokens ? gp->calib_tokens : 64;
		if (n_calib > hp->n_ctx)
			n_calib = hp->n_ctx;
		if (n_calib < 1) {
			rc = spa_err(err, -SPA_EUSAGE, "the base's context is empty: cannot calibrate");
			goto out;
		}
		margins = malloc((size_t)n_calib * sizeof *margins);
		if (!margins) {
			rc = spa_err(err, -ENOMEM, "out of memory for the plugin calibration");
			goto out;
		}
		double f_ms = 0, g_ms = 0;
		rc = calibrate_run(m, p, gp->calib_prompt ? gp->calib_prompt : default_calib_prompt,
				   n_calib, margins, &f_ms, &g_ms, err);
		if (rc < 0)
			goto out;
		if (g_ms > 0 && isfinite(g_ms) && isfinite(f_ms)) {
			float s = (float)sqrt(f_ms / g_ms);
			for (uint64_t i = 0; i < (uint64_t)H * p->rank; i++)
				p->out_w[i] *= s;
		}
		if (gp->side_fraction >= 0.0f) {
			float q = calibrate_threshold(margins, n_calib, gp->side_fraction);
			p->cls_b[0] = 0.0f;
			p->cls_b[1] = -q;
		}
	}

	if ((rc = spa_gguf_writer_create(&w)) < 0) {
		spa_err(err, rc, "out of memory writing the plugin");
		goto out;
	}
	if ((rc = write_header(w, p, SPA_PART_FULL)) < 0)
		goto werr;
	if (p->kind == SPA_PLUGIN_SIDE && gp->side_fraction >= 0.0f &&
	    ((rc = spa_gguf_writer_set_f32(w, "spa.plugin.side_fraction", gp->side_fraction)) < 0 ||
	     (rc = spa_gguf_writer_set_u32(w, "spa.plugin.calib_positions", n_calib)) < 0))
		goto werr;
	if ((rc = spa_gguf_writer_set_u64(w, "spa.plugin.seed", gp->seed)) < 0)
		goto werr;
	if ((rc = spa_tokenizer_write(m->tok, w)) < 0 ||
	    (rc = write_tensors(w, p, SPA_PART_FULL, 0)) < 0)
		goto werr;
	rc = spa_gguf_writer_write(w, path, false, err);
	goto out;
werr:
	spa_err(err, rc, "%s: cannot build the plugin: %s", path, spa_strerror(rc));
out:
	spa_gguf_writer_destroy(w);
	free(margins);
	spa_plugin_destroy(p);
	return rc;
}
