/*
 * A fake libnvidia-ml.so.1 for tests, the demo and the simulator.
 *
 * The real pynvml loads it unchanged. Types, constants and prototypes come from NVIDIA's own
 * nvml.h (the nvidia-nvml-dev package), so the compiler checks every exported function's
 * signature and every struct layout against NVML's; nothing here restates them. What the
 * "GPUs" report comes from a scenario file named by NAVARCH_FAKE_NVML_SCENARIO; FAKE_NVML.md
 * documents the format and the build command (fake_nvml.py's build() runs it).
 *
 * One mutex guards all state. Every API call first "syncs": it picks up lines appended to
 * the scenario file and applies timed statements that have come due, so injected faults
 * show up on the next call without a background thread. Blocked event waits re-check on a
 * short tick for the same reason.
 */
#define _GNU_SOURCE
/* Without this the header renames nvmlInit, nvmlDeviceGetCount and others to their _v2/_v3
 * names; pynvml releases differ in which name they call, so the fake exports both. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <errno.h>
#include <fcntl.h>
#include <nvml.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NVML_API __attribute__((visibility("default")))

#define FAKE_MAX_GPUS 16
#define FAKE_MAX_LINKS 36
#define FAKE_EVENT_QUEUE 256
#define FAKE_TICK_NS 20000000L /* how often a blocked wait re-reads the scenario file */
/* What NVML puts in an event's MIG instance ids when MIG is off. */
#define FAKE_NO_MIG_INSTANCE 0xFFFFFFFFu

/* Field groups a scenario can make fail (e.g. NOT_SUPPORTED). */
enum group {
    G_UUID,
    G_NAME,
    G_PCI,
    G_SERIAL,
    G_TEMPERATURE,
    G_POWER,
    G_POWER_LIMIT,
    G_MEMORY,
    G_UTILIZATION,
    G_THROTTLE,
    G_ECC,
    G_ROW_REMAPPING,
    G_RETIRED_PAGES,
    G_NVLINK,
    G_PCIE_REPLAYS,
    G_EVENTS,
    G_COUNT
};

static const char *const group_names[G_COUNT] = {
    "uuid",        "name",   "pci",         "serial",   "temperature", "power",
    "power_limit", "memory", "utilization", "throttle", "ecc",         "row_remapping",
    "retired_pages", "nvlink", "pcie_replays", "events",
};

/* The NVLink error counters a scenario can set; NVML's other counters answer INVALID_ARGUMENT. */
static const char *const link_counter_names[] = {
    [NVML_NVLINK_ERROR_DL_REPLAY] = "replay",
    [NVML_NVLINK_ERROR_DL_RECOVERY] = "recovery",
    [NVML_NVLINK_ERROR_DL_CRC_FLIT] = "crc_flit",
    [NVML_NVLINK_ERROR_DL_CRC_DATA] = "crc_data",
};
#define FAKE_LINK_COUNTERS (sizeof(link_counter_names) / sizeof(link_counter_names[0]))

struct link {
    unsigned int active;
    unsigned long long counters[FAKE_LINK_COUNTERS];
};

struct nvmlDevice_st {
    int present;
    unsigned int index;
    char uuid[96];
    char name[96];
    char pci[32];
    char serial[32];
    unsigned int temperature;
    unsigned int power_mw;
    unsigned int power_limit_mw;
    unsigned long long memory_used_mib;
    unsigned long long memory_total_mib;
    unsigned int utilization_gpu;
    unsigned int utilization_memory;
    unsigned long long throttle;
    unsigned int ecc_mode;
    unsigned long long ecc[NVML_MEMORY_ERROR_TYPE_COUNT][NVML_ECC_COUNTER_TYPE_COUNT];
    unsigned int remap_correctable;
    unsigned int remap_uncorrectable;
    unsigned int remap_pending;
    unsigned int remap_failure;
    unsigned int retired_sbe;
    unsigned int retired_dbe;
    unsigned int retired_pending;
    unsigned int nvlink_count;
    struct link links[FAKE_MAX_LINKS];
    unsigned int pcie_replays;
    unsigned int lost;
    nvmlReturn_t fail[G_COUNT];
};

struct nvmlEventSet_st {
    unsigned long generation;
    unsigned long long registered[FAKE_MAX_GPUS];
    nvmlEventData_t queue[FAKE_EVENT_QUEUE];
    unsigned int head;
    unsigned int count;
    struct nvmlEventSet_st *next;
};

struct timed {
    double at;
    char *statement;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wakeup;
static pthread_once_t wakeup_once = PTHREAD_ONCE_INIT;

static unsigned int refcount;
static unsigned long generation;
static struct timespec started;
static char scenario_path[4096];
static dev_t scenario_dev;
static ino_t scenario_ino;
static off_t scenario_offset;
static unsigned int scenario_line;

static char driver_version[80];
static int cuda_version;
static char nvml_version[80];
static nvmlReturn_t init_error;
static char kmsg_path[4096];
static unsigned int device_count;
static struct nvmlDevice_st devices[FAKE_MAX_GPUS];
static struct nvmlEventSet_st *event_sets;
static struct timed *timeline;
static size_t timeline_len;
static size_t timeline_cap;

static void init_wakeup(void) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wakeup, &attr);
    pthread_condattr_destroy(&attr);
}

__attribute__((format(printf, 1, 2))) static void warn(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "fake NVML: %s line %u: ", scenario_path, scenario_line);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
}

static double elapsed(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - started.tv_sec) + (double)(now.tv_nsec - started.tv_nsec) / 1e9;
}

static void copy_string(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src);
}

static void set_defaults(struct nvmlDevice_st *d, unsigned int index) {
    memset(d, 0, sizeof(*d));
    d->present = 1;
    d->index = index;
    snprintf(d->uuid, sizeof(d->uuid), "GPU-f0e1d2c3-0000-4000-8000-%012x", index);
    copy_string(d->name, sizeof(d->name), "NVIDIA H100 80GB HBM3");
    snprintf(d->pci, sizeof(d->pci), "00000000:%02X:00.0", 0x18 + 0x0C * index);
    snprintf(d->serial, sizeof(d->serial), "16500000%05u", index);
    d->temperature = 35;
    d->power_mw = 70000;
    d->power_limit_mw = 700000;
    d->memory_total_mib = 81559;
    d->ecc_mode = 1;
    for (unsigned int link = 0; link < FAKE_MAX_LINKS; link++) d->links[link].active = 1;
}

static struct nvmlDevice_st *device_at(unsigned int index) {
    if (index >= FAKE_MAX_GPUS) return NULL;
    for (unsigned int i = 0; i <= index; i++)
        if (!devices[i].present) set_defaults(&devices[i], i);
    if (device_count < index + 1) device_count = index + 1;
    return &devices[index];
}

static void reset_state(void) {
    for (size_t i = 0; i < timeline_len; i++) free(timeline[i].statement);
    timeline_len = 0;
    memset(devices, 0, sizeof(devices));
    device_count = 0;
    copy_string(driver_version, sizeof(driver_version), "550.54.15");
    cuda_version = 12040;
    nvml_version[0] = '\0';
    init_error = NVML_SUCCESS;
    kmsg_path[0] = '\0';
    scenario_offset = 0;
    scenario_line = 0;
}

/* Splits off the next whitespace-separated word; returns NULL at the end of the line. */
static char *next_word(char **cursor) {
    char *s = *cursor;
    while (*s == ' ' || *s == '\t') s++;
    if (*s == '\0') {
        *cursor = s;
        return NULL;
    }
    char *word = s;
    while (*s != '\0' && *s != ' ' && *s != '\t') s++;
    if (*s != '\0') *s++ = '\0';
    *cursor = s;
    return word;
}

static char *rest_of_line(char **cursor) {
    char *s = *cursor;
    while (*s == ' ' || *s == '\t') s++;
    return s;
}

static int parse_number(const char *word, unsigned long long *out) {
    char *end;
    if (word == NULL || *word == '\0' || *word == '-') return 0;
    errno = 0;
    *out = strtoull(word, &end, 0);
    return errno == 0 && *end == '\0';
}

static int find_group(const char *word) {
    for (int g = 0; g < G_COUNT; g++)
        if (word != NULL && strcmp(word, group_names[g]) == 0) return g;
    return -1;
}

static void pci_short(const char *bus_id, char *out, size_t size) {
    unsigned int domain = 0, bus = 0, device = 0;
    sscanf(bus_id, "%x:%x:%x", &domain, &bus, &device);
    snprintf(out, size, "%04x:%02x:%02x", domain & 0xFFFF, bus, device);
}

static const char *xid_default_message(unsigned long long code) {
    switch (code) {
    case 13: return "Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address";
    case 31: return "Ch 00000008, intr 00000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted "
                    "@ 0x7f1c_00000000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ";
    case 43: return "Ch 00000010";
    case 45: return "Ch 00000010";
    case 48: return "An uncorrectable double bit error (DBE) has been detected on GPU in the "
                    "framebuffer at partition 0, subpartition 0.";
    case 63: return "Row Remapper: New row marked for remapping, reset gpu to activate.";
    case 64: return "Row Remapper: Failed to remap row, reset gpu to try remapping again.";
    case 74: return "NVLink: fatal error detected on link 0(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)";
    case 79: return "GPU has fallen off the bus.";
    case 92: return "High single-bit ECC error rate detected.";
    case 94: return "Contained: SM (0x1). RST: No, D-RST: No";
    case 95: return "Uncontained: FBHUB. RST: Yes, D-RST: No";
    case 119: return "Timeout after 6s of waiting for RPC response from GPU0 GSP! Expected "
                     "function 76 (GSP_RM_CONTROL) (0x2080014b 0x5).";
    case 154: return "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)";
    default: return "Error injected by the fake NVML scenario.";
    }
}

/* Appends one /dev/kmsg record; the sequence number continues the records already there. */
static void write_kmsg(const struct nvmlDevice_st *d, unsigned long long code, const char *pid,
                       const char *process, const char *message) {
    char pci[32];
    struct timespec boot;
    unsigned long long seq = 0;
    char buf[4096];
    ssize_t n;
    int fd = open(kmsg_path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        warn("cannot open kmsg file %s", kmsg_path);
        return;
    }
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        for (ssize_t i = 0; i < n; i++) seq += buf[i] == '\n';
    pci_short(d->pci, pci, sizeof(pci));
    clock_gettime(CLOCK_MONOTONIC, &boot);
    int len = snprintf(buf, sizeof(buf), "4,%llu,%llu,-;NVRM: Xid (PCI:%s): %llu, pid=%s, name=%s, %s\n",
                       seq, (unsigned long long)boot.tv_sec * 1000000ULL +
                                (unsigned long long)boot.tv_nsec / 1000ULL,
                       pci, code, pid, process, message);
    if (len > 0 && write(fd, buf, (size_t)len) != len) warn("short write to kmsg file %s", kmsg_path);
    close(fd);
}

static void deliver_event(struct nvmlDevice_st *d, unsigned long long type, unsigned long long data) {
    for (struct nvmlEventSet_st *set = event_sets; set != NULL; set = set->next) {
        if (set->generation != generation || !(set->registered[d->index] & type)) continue;
        if (set->count == FAKE_EVENT_QUEUE) continue; /* a full queue drops, like NVML's */
        nvmlEventData_t *e = &set->queue[(set->head + set->count) % FAKE_EVENT_QUEUE];
        e->device = d;
        e->eventType = type;
        e->eventData = data;
        e->gpuInstanceId = FAKE_NO_MIG_INSTANCE;
        e->computeInstanceId = FAKE_NO_MIG_INSTANCE;
        set->count++;
    }
    pthread_cond_broadcast(&wakeup);
}

/* gpu <i> xid <code> [kmsg] [pid <n>] [name <process>] [msg <text...>] */
static void apply_xid(struct nvmlDevice_st *d, char **cursor) {
    unsigned long long code;
    char *word = next_word(cursor);
    const char *pid = "'<unknown>'";
    const char *process = "<unknown>";
    const char *message = NULL;
    int to_kmsg = 0;
    if (!parse_number(word, &code)) {
        warn("xid needs a numeric code, got %s", word ? word : "nothing");
        return;
    }
    while ((word = next_word(cursor)) != NULL) {
        if (strcmp(word, "kmsg") == 0) {
            to_kmsg = 1;
        } else if (strcmp(word, "pid") == 0 && (word = next_word(cursor)) != NULL) {
            pid = word;
        } else if (strcmp(word, "name") == 0 && (word = next_word(cursor)) != NULL) {
            process = word;
        } else if (strcmp(word, "msg") == 0) {
            message = rest_of_line(cursor);
            break;
        } else {
            warn("unknown xid option %s", word);
        }
    }
    deliver_event(d, nvmlEventTypeXidCriticalError, code);
    if (to_kmsg) {
        if (kmsg_path[0] == '\0')
            warn("xid asks for kmsg but the scenario names no kmsg file");
        else
            write_kmsg(d, code, pid, process, message ? message : xid_default_message(code));
    }
}

/* gpu <i> nvlink <link> <active|replay|recovery|crc_flit|crc_data> <value> */
static void apply_nvlink(struct nvmlDevice_st *d, char **cursor) {
    unsigned long long link, value;
    char *link_word = next_word(cursor);
    char *what = next_word(cursor);
    if (!parse_number(link_word, &link) || link >= FAKE_MAX_LINKS || what == NULL ||
        !parse_number(next_word(cursor), &value)) {
        warn("nvlink needs: <link> <active|replay|recovery|crc_flit|crc_data> <value>");
        return;
    }
    if (d->nvlink_count < link + 1) d->nvlink_count = (unsigned int)link + 1;
    if (strcmp(what, "active") == 0) {
        d->links[link].active = value != 0;
        return;
    }
    for (size_t c = 0; c < FAKE_LINK_COUNTERS; c++) {
        if (strcmp(what, link_counter_names[c]) == 0) {
            d->links[link].counters[c] = value;
            return;
        }
    }
    warn("unknown nvlink field %s", what);
}

/* gpu <i> unsupported <group> | supported <group> | fail <group> <code> */
static void apply_fail(struct nvmlDevice_st *d, const char *verb, char **cursor) {
    int g = find_group(next_word(cursor));
    unsigned long long code = NVML_ERROR_NOT_SUPPORTED;
    if (g < 0) {
        warn("%s needs a field group", verb);
        return;
    }
    if (strcmp(verb, "supported") == 0) {
        code = NVML_SUCCESS;
    } else if (strcmp(verb, "fail") == 0 && !parse_number(next_word(cursor), &code)) {
        warn("fail needs: <group> <nvml error code>");
        return;
    }
    d->fail[g] = (nvmlReturn_t)code;
}

static int set_string(struct nvmlDevice_st *d, const char *field, char **cursor) {
    char *value = rest_of_line(cursor);
    if (strcmp(field, "uuid") == 0) copy_string(d->uuid, sizeof(d->uuid), value);
    else if (strcmp(field, "name") == 0) copy_string(d->name, sizeof(d->name), value);
    else if (strcmp(field, "pci") == 0) copy_string(d->pci, sizeof(d->pci), value);
    else if (strcmp(field, "serial") == 0) copy_string(d->serial, sizeof(d->serial), value);
    else return 0;
    return 1;
}

static int set_number(struct nvmlDevice_st *d, const char *field, char **cursor) {
    static const struct {
        const char *name;
        size_t offset;
        int wide;
    } fields[] = {
#define U(f) {#f, offsetof(struct nvmlDevice_st, f), 0}
#define W(f) {#f, offsetof(struct nvmlDevice_st, f), 1}
        U(temperature),      U(power_mw),        U(power_limit_mw),      W(memory_used_mib),
        W(memory_total_mib), U(utilization_gpu), U(utilization_memory),  W(throttle),
        U(ecc_mode),         U(remap_correctable), U(remap_uncorrectable), U(remap_pending),
        U(remap_failure),    U(retired_sbe),     U(retired_dbe),         U(retired_pending),
        U(nvlink_count),     U(pcie_replays),    U(lost),
#undef U
#undef W
#define ECC(name, type, counter) \
    {name, offsetof(struct nvmlDevice_st, ecc[NVML_MEMORY_ERROR_TYPE_##type][counter]), 1}
        ECC("ecc_volatile_corrected", CORRECTED, NVML_VOLATILE_ECC),
        ECC("ecc_aggregate_corrected", CORRECTED, NVML_AGGREGATE_ECC),
        ECC("ecc_volatile_uncorrected", UNCORRECTED, NVML_VOLATILE_ECC),
        ECC("ecc_aggregate_uncorrected", UNCORRECTED, NVML_AGGREGATE_ECC),
#undef ECC
    };
    unsigned long long value;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (strcmp(field, fields[i].name) != 0) continue;
        if (!parse_number(next_word(cursor), &value)) {
            warn("%s needs a non-negative number", field);
            return 1;
        }
        if (fields[i].wide)
            *(unsigned long long *)((char *)d + fields[i].offset) = value;
        else
            *(unsigned int *)((char *)d + fields[i].offset) = (unsigned int)value;
        if (d->nvlink_count > FAKE_MAX_LINKS) d->nvlink_count = FAKE_MAX_LINKS;
        return 1;
    }
    return 0;
}

static void apply_gpu(char **cursor) {
    unsigned long long index;
    struct nvmlDevice_st *d;
    char *field;
    if (!parse_number(next_word(cursor), &index) || index >= FAKE_MAX_GPUS) {
        warn("gpu needs an index below 16");
        return;
    }
    d = device_at((unsigned int)index);
    field = next_word(cursor);
    if (field == NULL) return;
    if (strcmp(field, "xid") == 0) apply_xid(d, cursor);
    else if (strcmp(field, "nvlink") == 0) apply_nvlink(d, cursor);
    else if (strcmp(field, "unsupported") == 0 || strcmp(field, "supported") == 0 ||
             strcmp(field, "fail") == 0)
        apply_fail(d, field, cursor);
    else if (!set_string(d, field, cursor) && !set_number(d, field, cursor))
        warn("unknown gpu field %s", field);
}

static void apply_statement(char *line) {
    char *cursor = line;
    char *word = next_word(&cursor);
    unsigned long long value;
    if (word == NULL) return;
    if (strcmp(word, "gpu") == 0) {
        apply_gpu(&cursor);
    } else if (strcmp(word, "gpus") == 0 && parse_number(next_word(&cursor), &value) &&
               value <= FAKE_MAX_GPUS) {
        if (value > 0) device_at((unsigned int)value - 1);
        device_count = (unsigned int)value;
    } else if (strcmp(word, "driver") == 0) {
        copy_string(driver_version, sizeof(driver_version), rest_of_line(&cursor));
    } else if (strcmp(word, "nvml") == 0) {
        copy_string(nvml_version, sizeof(nvml_version), rest_of_line(&cursor));
    } else if (strcmp(word, "cuda") == 0 && parse_number(next_word(&cursor), &value)) {
        cuda_version = (int)value;
    } else if (strcmp(word, "init_error") == 0 && parse_number(next_word(&cursor), &value)) {
        init_error = (nvmlReturn_t)value;
    } else if (strcmp(word, "kmsg") == 0) {
        copy_string(kmsg_path, sizeof(kmsg_path), rest_of_line(&cursor));
    } else {
        warn("cannot read statement starting with %s", word);
    }
}

static void schedule(double at, const char *statement) {
    size_t i;
    if (timeline_len == timeline_cap) {
        timeline_cap = timeline_cap ? timeline_cap * 2 : 32;
        timeline = realloc(timeline, timeline_cap * sizeof(*timeline));
        if (timeline == NULL) abort();
    }
    /* Keep the timeline sorted by time; equal times keep file order. */
    for (i = timeline_len; i > 0 && timeline[i - 1].at > at; i--) timeline[i] = timeline[i - 1];
    timeline[i].at = at;
    timeline[i].statement = strdup(statement);
    if (timeline[i].statement == NULL) abort();
    timeline_len++;
}

static void read_line(char *line) {
    char *cursor = line, *word, *end;
    double at;
    scenario_line++;
    line[strcspn(line, "#\r\n")] = '\0';
    while (*cursor == ' ' || *cursor == '\t') cursor++;
    if (strncmp(cursor, "at", 2) != 0 || (cursor[2] != ' ' && cursor[2] != '\t')) {
        apply_statement(cursor);
        return;
    }
    cursor += 2;
    word = next_word(&cursor);
    at = word ? strtod(word, &end) : 0;
    if (word == NULL || *end != '\0' || at < 0) {
        warn("at needs a time in seconds");
        return;
    }
    schedule(at, rest_of_line(&cursor));
}

static void apply_due(void) {
    double now = elapsed();
    size_t due = 0;
    while (due < timeline_len && timeline[due].at <= now) {
        apply_statement(timeline[due].statement);
        free(timeline[due].statement);
        due++;
    }
    if (due > 0) {
        memmove(timeline, timeline + due, (timeline_len - due) * sizeof(*timeline));
        timeline_len -= due;
    }
}

/* Reads lines appended since the last read; `final` also takes a last line without '\n'. */
static int read_scenario(int final) {
    struct stat st;
    FILE *f;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    if (stat(scenario_path, &st) != 0) return 0;
    if (!final) {
        /* A rewritten file is a new scenario: it is read at the next nvmlInit. */
        if (st.st_dev != scenario_dev || st.st_ino != scenario_ino) return 1;
        if (st.st_size <= scenario_offset) return 1;
    }
    f = fopen(scenario_path, "re");
    if (f == NULL) return 0;
    scenario_dev = st.st_dev;
    scenario_ino = st.st_ino;
    if (fseeko(f, scenario_offset, SEEK_SET) != 0) {
        fclose(f);
        return 0;
    }
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] != '\n' && !final) break; /* still being written */
        scenario_offset += n;
        read_line(line);
    }
    free(line);
    fclose(f);
    return 1;
}

static void sync_locked(void) {
    if (refcount == 0) return;
    read_scenario(0);
    apply_due();
}

static nvmlReturn_t load_scenario(void) {
    const char *path = getenv("NAVARCH_FAKE_NVML_SCENARIO");
    reset_state();
    generation++;
    clock_gettime(CLOCK_MONOTONIC, &started);
    if (path == NULL || *path == '\0') {
        fprintf(stderr, "fake NVML: NAVARCH_FAKE_NVML_SCENARIO is not set\n");
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    copy_string(scenario_path, sizeof(scenario_path), path);
    if (!read_scenario(1)) {
        fprintf(stderr, "fake NVML: cannot read scenario %s: %s\n", path, strerror(errno));
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    apply_due();
    return init_error;
}

static nvmlReturn_t do_init(void) {
    nvmlReturn_t ret = NVML_SUCCESS;
    pthread_once(&wakeup_once, init_wakeup);
    pthread_mutex_lock(&lock);
    if (refcount == 0) ret = load_scenario();
    if (ret == NVML_SUCCESS) refcount++;
    pthread_mutex_unlock(&lock);
    return ret;
}

NVML_API nvmlReturn_t nvmlInit(void) { return do_init(); }
NVML_API nvmlReturn_t nvmlInit_v2(void) { return do_init(); }
NVML_API nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return do_init();
}

NVML_API nvmlReturn_t nvmlShutdown(void) {
    nvmlReturn_t ret = NVML_SUCCESS;
    pthread_mutex_lock(&lock);
    if (refcount == 0) ret = NVML_ERROR_UNINITIALIZED;
    else if (--refcount == 0) pthread_cond_broadcast(&wakeup);
    pthread_mutex_unlock(&lock);
    return ret;
}

NVML_API const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_VGPU_ECC_NOT_SUPPORTED:
        return "The requested vgpu operation is not available on target device, because ECC is "
               "enabled";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Insufficient resources for request";
    case NVML_ERROR_FREQ_NOT_SUPPORTED: return "Frequency not supported";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "Deprecated";
    case NVML_ERROR_NOT_READY: return "Not ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    case NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: return "Reset type not supported";
    default: return "Unknown Error";
    }
}

/*
 * Device calls: lock, sync, check the handle and the field group, then read under the lock.
 * DEVICE_CALL declares `d` and returns early with the scenario's error for `group`.
 */
static nvmlReturn_t enter(nvmlDevice_t device, int group) {
    pthread_mutex_lock(&lock);
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    sync_locked();
    if (device == NULL || device < devices || device >= devices + device_count || !device->present)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->lost) return NVML_ERROR_GPU_IS_LOST;
    return group >= 0 ? device->fail[group] : NVML_SUCCESS;
}

static nvmlReturn_t leave(nvmlReturn_t ret) {
    pthread_mutex_unlock(&lock);
    return ret;
}

#define DEVICE_CALL(group)                          \
    nvmlReturn_t ret_ = enter(device, (group));     \
    if (ret_ != NVML_SUCCESS) return leave(ret_);   \
    struct nvmlDevice_st *d = device

static nvmlReturn_t system_enter(void) {
    pthread_mutex_lock(&lock);
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    sync_locked();
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_out(char *dst, unsigned int length, const char *src) {
    if (dst == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t ret = system_enter();
    return leave(ret != NVML_SUCCESS ? ret : copy_out(version, length, driver_version));
}

NVML_API nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    char derived[sizeof(nvml_version) + 16];
    nvmlReturn_t ret = system_enter();
    if (ret != NVML_SUCCESS) return leave(ret);
    /* Unless the scenario says otherwise, NVML's version follows the driver's, as it does. */
    snprintf(derived, sizeof(derived), "%d.%s", cuda_version / 1000, driver_version);
    return leave(copy_out(version, length, nvml_version[0] ? nvml_version : derived));
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    nvmlReturn_t ret = system_enter();
    if (ret == NVML_SUCCESS && version == NULL) ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) *version = cuda_version;
    return leave(ret);
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}

NVML_API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    nvmlReturn_t ret = system_enter();
    if (ret == NVML_SUCCESS && count == NULL) ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) *count = device_count;
    return leave(ret);
}

NVML_API nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    nvmlReturn_t ret = system_enter();
    if (ret == NVML_SUCCESS && (device == NULL || index >= device_count))
        ret = NVML_ERROR_INVALID_ARGUMENT;
    else if (ret == NVML_SUCCESS && devices[index].lost)
        ret = NVML_ERROR_GPU_IS_LOST;
    if (ret == NVML_SUCCESS) *device = &devices[index];
    return leave(ret);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    DEVICE_CALL(-1);
    if (index == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *index = d->index;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE_CALL(G_UUID);
    return leave(copy_out(uuid, length, d->uuid));
}

NVML_API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    DEVICE_CALL(G_NAME);
    return leave(copy_out(name, length, d->name));
}

NVML_API nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length) {
    DEVICE_CALL(G_SERIAL);
    return leave(copy_out(serial, length, d->serial));
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    unsigned int domain = 0, bus = 0, dev = 0, function = 0;
    DEVICE_CALL(G_PCI);
    if (pci == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof(*pci));
    sscanf(d->pci, "%x:%x:%x.%x", &domain, &bus, &dev, &function);
    pci->domain = domain;
    pci->bus = bus;
    pci->device = dev;
    pci->pciDeviceId = 0x233010DE;
    pci->pciSubSystemId = 0x16C110DE;
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%04X:%02X:%02X.%X", domain & 0xFFFF, bus,
             dev, function);
    copy_string(pci->busId, sizeof(pci->busId), d->pci);
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    return nvmlDeviceGetPciInfo_v3(device, pci);
}

NVML_API nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device,
                                               nvmlTemperatureSensors_t sensor,
                                               unsigned int *temp) {
    DEVICE_CALL(G_TEMPERATURE);
    if (temp == NULL || sensor != NVML_TEMPERATURE_GPU) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *temp = d->temperature;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_t *temp) {
    DEVICE_CALL(G_TEMPERATURE);
    if (temp == NULL || temp->sensorType != NVML_TEMPERATURE_GPU)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (temp->version != nvmlTemperature_v1) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    temp->temperature = (int)d->temperature;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    DEVICE_CALL(G_POWER);
    if (power == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *power = d->power_mw;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    DEVICE_CALL(G_POWER_LIMIT);
    if (limit == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *limit = d->power_limit_mw;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    DEVICE_CALL(G_MEMORY);
    if (memory == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    memory->total = d->memory_total_mib << 20;
    memory->used = d->memory_used_mib << 20;
    memory->free = memory->total > memory->used ? memory->total - memory->used : 0;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *util) {
    DEVICE_CALL(G_UTILIZATION);
    if (util == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    util->gpu = d->utilization_gpu;
    util->memory = d->utilization_memory;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device,
                                                              unsigned long long *reasons) {
    DEVICE_CALL(G_THROTTLE);
    if (reasons == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *reasons = d->throttle;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                                 unsigned long long *reasons) {
    return nvmlDeviceGetCurrentClocksEventReasons(device, reasons);
}

static nvmlEnableState_t enable_state(unsigned int on) {
    return on ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
}

NVML_API nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t device, nvmlEnableState_t *current,
                                           nvmlEnableState_t *pending) {
    DEVICE_CALL(G_ECC);
    if (current == NULL || pending == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *current = *pending = enable_state(d->ecc_mode);
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device,
                                                  nvmlMemoryErrorType_t error_type,
                                                  nvmlEccCounterType_t counter_type,
                                                  unsigned long long *count) {
    DEVICE_CALL(G_ECC);
    if (count == NULL || error_type >= NVML_MEMORY_ERROR_TYPE_COUNT ||
        counter_type >= NVML_ECC_COUNTER_TYPE_COUNT)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = d->ecc[error_type][counter_type];
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corr,
                                                unsigned int *unc, unsigned int *pending,
                                                unsigned int *failure) {
    DEVICE_CALL(G_ROW_REMAPPING);
    if (corr == NULL || unc == NULL || pending == NULL || failure == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *corr = d->remap_correctable;
    *unc = d->remap_uncorrectable;
    *pending = d->remap_pending != 0;
    *failure = d->remap_failure != 0;
    return leave(NVML_SUCCESS);
}

static nvmlReturn_t retired_pages(nvmlDevice_t device, nvmlPageRetirementCause_t cause,
                                  unsigned int *count, unsigned long long *addresses,
                                  unsigned long long *timestamps) {
    unsigned int have;
    DEVICE_CALL(G_RETIRED_PAGES);
    if (count == NULL || cause >= NVML_PAGE_RETIREMENT_CAUSE_COUNT)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    have = cause == NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS ? d->retired_sbe
                                                                              : d->retired_dbe;
    if (*count < have || (have > 0 && addresses == NULL)) {
        *count = have;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (unsigned int i = 0; i < have; i++) {
        addresses[i] = 0x1000000ULL * (cause + 1) + 0x1000ULL * i;
        if (timestamps != NULL) timestamps[i] = 1700000000ULL + i;
    }
    *count = have;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t device,
                                                nvmlPageRetirementCause_t cause,
                                                unsigned int *count, unsigned long long *addresses) {
    return retired_pages(device, cause, count, addresses, NULL);
}

NVML_API nvmlReturn_t nvmlDeviceGetRetiredPages_v2(nvmlDevice_t device,
                                                   nvmlPageRetirementCause_t cause,
                                                   unsigned int *count,
                                                   unsigned long long *addresses,
                                                   unsigned long long *timestamps) {
    return retired_pages(device, cause, count, addresses, timestamps);
}

NVML_API nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device,
                                                             nvmlEnableState_t *pending) {
    DEVICE_CALL(G_RETIRED_PAGES);
    if (pending == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *pending = enable_state(d->retired_pending);
    return leave(NVML_SUCCESS);
}

/* NVML answers NOT_SUPPORTED on GPUs without NVLink and INVALID_ARGUMENT past the last link. */
static nvmlReturn_t link_check(struct nvmlDevice_st *d, unsigned int link) {
    if (d->nvlink_count == 0) return NVML_ERROR_NOT_SUPPORTED;
    return link < d->nvlink_count ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}

NVML_API nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link,
                                               nvmlEnableState_t *active) {
    DEVICE_CALL(G_NVLINK);
    nvmlReturn_t ret = link_check(d, link);
    if (ret == NVML_SUCCESS && active == NULL) ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) *active = enable_state(d->links[link].active);
    return leave(ret);
}

NVML_API nvmlReturn_t nvmlDeviceGetNvLinkErrorCounter(nvmlDevice_t device, unsigned int link,
                                                      nvmlNvLinkErrorCounter_t counter,
                                                      unsigned long long *value) {
    DEVICE_CALL(G_NVLINK);
    nvmlReturn_t ret = link_check(d, link);
    if (ret == NVML_SUCCESS && (value == NULL || counter >= FAKE_LINK_COUNTERS))
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) *value = d->links[link].counters[counter];
    return leave(ret);
}

NVML_API nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t device, unsigned int *value) {
    DEVICE_CALL(G_PCIE_REPLAYS);
    if (value == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *value = d->pcie_replays;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device,
                                                       unsigned long long *types) {
    DEVICE_CALL(G_EVENTS);
    (void)d;
    if (types == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *types = nvmlEventTypeXidCriticalError;
    return leave(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    nvmlReturn_t ret = system_enter();
    if (ret == NVML_SUCCESS && set == NULL) ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        struct nvmlEventSet_st *s = calloc(1, sizeof(*s));
        if (s == NULL) return leave(NVML_ERROR_MEMORY);
        s->generation = generation;
        s->next = event_sets;
        event_sets = s;
        *set = s;
    }
    return leave(ret);
}

NVML_API nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                               nvmlEventSet_t set) {
    DEVICE_CALL(G_EVENTS);
    if (set == NULL || set->generation != generation) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (types & ~nvmlEventTypeXidCriticalError) return leave(NVML_ERROR_NOT_SUPPORTED);
    set->registered[d->index] |= types;
    return leave(NVML_SUCCESS);
}

static int set_is_live(nvmlEventSet_t set) {
    return refcount > 0 && set->generation == generation;
}

NVML_API nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                          unsigned int timeoutms) {
    struct timespec deadline, tick;
    nvmlReturn_t ret = system_enter();
    if (ret != NVML_SUCCESS) return leave(ret);
    if (set == NULL || data == NULL) return leave(NVML_ERROR_INVALID_ARGUMENT);
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeoutms / 1000;
    deadline.tv_nsec += (long)(timeoutms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    for (;;) {
        if (!set_is_live(set)) return leave(NVML_ERROR_UNINITIALIZED);
        sync_locked();
        if (set->count > 0) {
            *data = set->queue[set->head];
            set->head = (set->head + 1) % FAKE_EVENT_QUEUE;
            set->count--;
            return leave(NVML_SUCCESS);
        }
        clock_gettime(CLOCK_MONOTONIC, &tick);
        if (tick.tv_sec > deadline.tv_sec ||
            (tick.tv_sec == deadline.tv_sec && tick.tv_nsec >= deadline.tv_nsec))
            return leave(NVML_ERROR_TIMEOUT);
        tick.tv_nsec += FAKE_TICK_NS;
        if (tick.tv_nsec >= 1000000000L) {
            tick.tv_sec++;
            tick.tv_nsec -= 1000000000L;
        }
        if (tick.tv_sec > deadline.tv_sec ||
            (tick.tv_sec == deadline.tv_sec && tick.tv_nsec > deadline.tv_nsec))
            tick = deadline;
        pthread_cond_timedwait(&wakeup, &lock, &tick);
    }
}

NVML_API nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data,
                                       unsigned int timeoutms) {
    return nvmlEventSetWait_v2(set, data, timeoutms);
}

NVML_API nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    nvmlReturn_t ret;
    pthread_mutex_lock(&lock);
    ret = refcount == 0 ? NVML_ERROR_UNINITIALIZED : NVML_SUCCESS;
    for (struct nvmlEventSet_st **p = &event_sets; *p != NULL; p = &(*p)->next) {
        if (*p == set) {
            *p = set->next;
            free(set);
            return leave(ret);
        }
    }
    return leave(NVML_ERROR_INVALID_ARGUMENT);
}
