/* journal.c - each guest's role and state on disk, for a restarted kvm-ftd */
#include "journal.h"

#include <string.h>
#include <json-glib/json-glib.h>

#include "jsontext.h"

/* A state name is short; anything longer is not one of ours. */
#define JOURNAL_STATE_MAX 32
/* The file is a few dozen bytes: a bigger one is not ours either. */
#define JOURNAL_MAX_BYTES 4096

static char *journal_file(const char *name)
{
    return g_strdup_printf("%s.journal", name);
}

gboolean journal_write(const char *state_dir, const char *name, const JournalEntry *entry,
                       GError **err)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) root = NULL;
    g_autofree char *file = journal_file(name);
    g_autofree char *text = NULL;

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "role");
    json_builder_add_string_value(b, ft_role_name(entry->role));
    json_builder_set_member_name(b, "state");
    json_builder_add_string_value(b, entry->state);
    json_add_string_or_null(b, "generation", entry->generation);
    json_builder_set_member_name(b, "rejoin");
    json_builder_add_boolean_value(b, entry->rejoin);
    json_builder_end_object(b);
    root = json_builder_get_root(b);
    text = json_to_string(root, FALSE);
    return ft_write_state_file(state_dir, file, text, err);
}

static gboolean invalid(GError **err, const char *path, const char *why)
{
    g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_INVAL, "%s is not a kvm-ft journal: %s",
                path, why);
    return FALSE;
}

gboolean journal_read(const char *state_dir, const char *name, JournalEntry *entry,
                      GError **err)
{
    g_autofree char *file = journal_file(name);
    g_autofree char *path = g_build_filename(state_dir, file, NULL);
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autofree char *text = NULL;
    gsize len = 0;
    JsonNode *root, *gen, *rejoin;
    JsonObject *o;
    const char *role, *state;

    memset(entry, 0, sizeof(*entry));
    if (!g_file_get_contents(path, &text, &len, err))
        return FALSE;
    if (len > JOURNAL_MAX_BYTES)
        return invalid(err, path, "too long");
    /* Strict, single-valued JSON first: json-glib leaks what follows a first value. */
    if (!json_text_sane(text, len, JSON_TEXT_MAX_DEPTH) ||
        !json_parser_load_from_data(parser, text, (gssize)len, NULL))
        return invalid(err, path, "not JSON");
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root))
        return invalid(err, path, "not a JSON object");
    o = json_node_get_object(root);
    role = json_member_string(o, "role");
    state = json_member_string(o, "state");
    gen = json_object_get_member(o, "generation");
    rejoin = json_object_get_member(o, "rejoin");
    if (g_strcmp0(role, "primary") != 0 && g_strcmp0(role, "secondary") != 0)
        return invalid(err, path, "no role primary or secondary");
    if (!state || !*state || strlen(state) > JOURNAL_STATE_MAX)
        return invalid(err, path, "no state");
    if (!gen || (!JSON_NODE_HOLDS_NULL(gen) && !json_node_is_uuid(gen)))
        return invalid(err, path, "the generation is neither null nor a UUID");
    if (!rejoin || !JSON_NODE_HOLDS_VALUE(rejoin) ||
        json_node_get_value_type(rejoin) != G_TYPE_BOOLEAN)
        return invalid(err, path, "no rejoin flag");
    entry->role = strcmp(role, "primary") == 0 ? FT_ROLE_PRIMARY : FT_ROLE_SECONDARY;
    entry->state = g_strdup(state);
    entry->generation = JSON_NODE_HOLDS_NULL(gen) ? NULL : g_strdup(json_node_get_string(gen));
    entry->rejoin = json_node_get_boolean(rejoin);
    return TRUE;
}

void journal_entry_clear(JournalEntry *entry)
{
    g_clear_pointer(&entry->state, g_free);
    g_clear_pointer(&entry->generation, g_free);
}

GPtrArray *journal_list(const char *state_dir)
{
    static const char suffix[] = ".journal";
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GDir) dir = g_dir_open(state_dir, 0, NULL);
    const char *file;

    while (dir && (file = g_dir_read_name(dir))) {
        gsize len = strlen(file);

        if (len > sizeof(suffix) - 1 && g_str_has_suffix(file, suffix))
            g_ptr_array_add(names, g_strndup(file, len - (sizeof(suffix) - 1)));
    }
    return names;
}
