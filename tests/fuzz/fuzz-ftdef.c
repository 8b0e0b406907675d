/*
 * fuzz-ftdef.c - libFuzzer harness of the FT guest definition parser
 *
 * Input: a libvirt domain XML document, as virDomainGetXMLDesc() or a peer
 * would hand it to ftdef_parse().  A definition that parses is also run
 * through what the daemon does with one: the derived definitions of both
 * roles (domxml_for_role()) and the metadata carried over between
 * definitions (domxml_with_ft_metadata_of()), which must give a document
 * that parses to the same pair and disks.
 */
#include "fuzz-common.h"

#include <string.h>

#include "domxml.h"
#include "ftdef.h"

static void check_def(const char *xml, const FtDef *def)
{
    g_autoptr(GPtrArray) active = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) hidden = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *element = NULL;
    g_autofree char *merged = NULL;
    g_autoptr(FtDef) again = NULL;
    g_autoptr(GError) e = NULL;

    /* What ftdef.h promises of a definition it returns. */
    g_assert(def->name && !strchr(def->name, '/'));
    g_assert(def->disks->len >= 1 && def->disks->len <= FTDEF_MAX_DISKS);
    for (guint i = 0; i < 2; i++)
        g_assert(ftdef_host_name_valid(def->hosts[i].name));
    g_assert(ftdef_self(def, def->hosts[0].name) == &def->hosts[0]);
    g_assert(ftdef_peer(def, def->hosts[0].name) == &def->hosts[1]);

    for (guint i = 0; i < def->disks->len; i++) {
        g_ptr_array_add(active, g_strdup_printf("/var/lib/kvm-ft/active%u.qcow2", i));
        g_ptr_array_add(hidden, g_strdup_printf("/var/lib/kvm-ft/hidden%u.qcow2", i));
    }
    for (FtRole role = FT_ROLE_PRIMARY; role <= FT_ROLE_SECONDARY; role++) {
        DomxmlPlumbing p = {
            .qmp_socket = "/run/kvm-ft/fuzz,guest.qmp",
            .own_start = role == FT_ROLE_PRIMARY,
            .active_overlays = (const char *const *)active->pdata,
            .hidden_overlays = (const char *const *)hidden->pdata,
        };
        g_autoptr(GError) re = NULL;
        g_autofree char *derived = domxml_for_role(xml, def, role, &p, &re);

        g_assert((derived == NULL) == (re != NULL));
        if (derived)
            g_assert(domxml_is_derived(derived));
    }

    element = domxml_ft_metadata_element(xml, NULL);
    merged = domxml_with_ft_metadata_of(xml, xml, &e);
    g_assert(element && merged);
    again = ftdef_parse(merged, NULL);
    g_assert(again && ftdef_same_pair_and_disks(def, again));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A C string, as the daemon has it: whatever follows a NUL is not seen. */
    g_autofree char *xml = g_strndup((const char *)data, size);
    g_autoptr(GError) e = NULL;
    g_autoptr(FtDef) def = NULL;

    fuzz_init();
    def = ftdef_parse(xml, &e);
    /* ftdef.h: a definition, or NULL with one of its two errors. */
    g_assert((def != NULL) != (e != NULL));
    if (e)
        g_assert(e->domain == FTDEF_ERROR && e->message && *e->message);
    if (def)
        check_def(xml, def);
    return 0;
}
