/*
 * test-guest-machine.c - the rules of guest-machine.c keep the promise of
 * the product: never two live copies, and a copy never left without a
 * decision when its QEMU or its peer goes
 */
#include <check.h>
#include <string.h>

#include "guest-internal.h"
#include "run-suite.h"

static const FtRole roles[] = { FT_ROLE_PRIMARY, FT_ROLE_SECONDARY };

/* The action's name, "-" for none (no rule, or a rule that does nothing). */
static const char *action(GuestState s, FtRole r, GuestEvent e)
{
    const char *name = guest_rule_action(s, r, e);

    return name && *name ? name : "-";
}

static gboolean does(GuestState s, FtRole r, GuestEvent e, const char *name)
{
    return strcmp(action(s, r, e), name) == 0;
}

START_TEST(only_a_protected_secondary_takes_over)
{
    for (GuestState s = 0; s < GUEST_N_STATES; s++)
        for (gsize i = 0; i < G_N_ELEMENTS(roles); i++)
            for (GuestEvent e = 0; e < GUEST_N_EVENTS; e++)
                if (does(s, roles[i], e, "take-over"))
                    ck_assert_msg(s == GUEST_PROTECTED && roles[i] == FT_ROLE_SECONDARY,
                                  "%s takes over in %s as %s", guest_event_name(e),
                                  guest_state_name(s), ft_role_name(roles[i]));
}
END_TEST

/*
 * While the primary can still run the guest (it answers on the LAN, it
 * says so, or only QEMU's stream broke), the secondary must not run it.
 */
START_TEST(what_a_live_primary_does_never_makes_the_secondary_run)
{
    const GuestEvent primary_alive[] = { GUEST_EV_LINK_CUT, GUEST_EV_COLO_EXIT,
                                         GUEST_EV_STAND_DOWN_ASKED, GUEST_EV_STOP_ASKED,
                                         GUEST_EV_PEER_RUNS_GUEST, GUEST_EV_CLAIM_LOST };

    for (GuestState s = 0; s < GUEST_N_STATES; s++)
        for (gsize i = 0; i < G_N_ELEMENTS(primary_alive); i++) {
            GuestEvent e = primary_alive[i];

            ck_assert_msg(!does(s, FT_ROLE_SECONDARY, e, "take-over") &&
                          !does(s, FT_ROLE_SECONDARY, e, "run-alone"),
                          "a secondary runs the guest on %s in %s: %s", guest_event_name(e),
                          guest_state_name(s), action(s, FT_ROLE_SECONDARY, e));
        }
    ck_assert_str_eq(action(GUEST_PROTECTED, FT_ROLE_SECONDARY, GUEST_EV_LINK_CUT), "stand-down");
    ck_assert_str_eq(action(GUEST_PROTECTED, FT_ROLE_PRIMARY, GUEST_EV_LINK_CUT),
                     "drop-secondary");
}
END_TEST

START_TEST(only_a_decided_failover_runs_alone)
{
    for (GuestState s = 0; s < GUEST_N_STATES; s++)
        for (gsize i = 0; i < G_N_ELEMENTS(roles); i++)
            for (GuestEvent e = 0; e < GUEST_N_EVENTS; e++)
                if (does(s, roles[i], e, "run-alone"))
                    ck_assert_msg((s == GUEST_TAKING_OVER || s == GUEST_DROPPING_SECONDARY) &&
                                  (e == GUEST_EV_CLAIM_WON || e == GUEST_EV_SOLO_FORCED),
                                  "%s runs alone in %s", guest_event_name(e),
                                  guest_state_name(s));
    /* The witness's "no" is final for either role. */
    for (gsize i = 0; i < G_N_ELEMENTS(roles); i++) {
        ck_assert_str_eq(action(GUEST_TAKING_OVER, roles[i], GUEST_EV_CLAIM_LOST),
                         "yield-to-winner");
        ck_assert_str_eq(action(GUEST_DROPPING_SECONDARY, roles[i], GUEST_EV_CLAIM_LOST),
                         "yield-to-winner");
    }
}
END_TEST

START_TEST(a_primary_is_never_stopped_by_its_peer)
{
    for (GuestState s = 0; s < GUEST_N_STATES; s++) {
        ck_assert_str_eq(action(s, FT_ROLE_PRIMARY, GUEST_EV_STOP_ASKED), "-");
        ck_assert_str_eq(action(s, FT_ROLE_PRIMARY, GUEST_EV_STAND_DOWN_ASKED), "-");
        ck_assert_str_eq(action(s, FT_ROLE_PRIMARY, GUEST_EV_TAKE_OVER_ASKED), "-");
    }
}
END_TEST

/* A QEMU that dies is never left unjudged: in each state and role some rule says what happens. */
START_TEST(a_dying_qemu_is_judged_in_every_state)
{
    for (GuestState s = 0; s < GUEST_N_STATES; s++)
        for (gsize i = 0; i < G_N_ELEMENTS(roles); i++) {
            ck_assert_ptr_nonnull(guest_rule_action(s, roles[i], GUEST_EV_QEMU_EXITED));
            ck_assert_ptr_nonnull(guest_rule_action(s, roles[i], GUEST_EV_QEMU_SHUT_DOWN));
        }
    /* The peer hears of it while the other copy can carry on. */
    ck_assert_str_eq(action(GUEST_PROTECTED, FT_ROLE_PRIMARY, GUEST_EV_QEMU_EXITED),
                     "fail-and-tell-peer");
    ck_assert_str_eq(action(GUEST_PROTECTED, FT_ROLE_SECONDARY, GUEST_EV_QEMU_EXITED),
                     "fail-and-tell-peer");
    ck_assert_str_eq(action(GUEST_HANDING_OVER, FT_ROLE_PRIMARY, GUEST_EV_QEMU_EXITED),
                     "hand-over");
    ck_assert_str_eq(action(GUEST_PROTECTED, FT_ROLE_PRIMARY, GUEST_EV_QEMU_SHUT_DOWN),
                     "stop-planned");
}
END_TEST

START_TEST(every_event_does_something_somewhere)
{
    for (GuestEvent e = 0; e < GUEST_N_EVENTS; e++) {
        gboolean acts = FALSE;

        for (GuestState s = 0; s < GUEST_N_STATES; s++)
            for (gsize i = 0; i < G_N_ELEMENTS(roles); i++)
                acts |= strcmp(action(s, roles[i], e), "-") != 0;
        ck_assert_msg(acts, "%s does nothing anywhere", guest_event_name(e));
        ck_assert_str_ne(guest_event_name(e), "invalid");
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("guest-machine");
    TCase *tc = tcase_create("rules");

    tcase_add_test(tc, only_a_protected_secondary_takes_over);
    tcase_add_test(tc, what_a_live_primary_does_never_makes_the_secondary_run);
    tcase_add_test(tc, only_a_decided_failover_runs_alone);
    tcase_add_test(tc, a_primary_is_never_stopped_by_its_peer);
    tcase_add_test(tc, a_dying_qemu_is_judged_in_every_state);
    tcase_add_test(tc, every_event_does_something_somewhere);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
