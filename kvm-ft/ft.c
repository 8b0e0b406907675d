/* ft.c - vocabulary shared by every kvm-ft module */
#include "ft.h"

const char *ft_role_name(FtRole role)
{
    switch (role) {
    case FT_ROLE_PRIMARY:
        return "primary";
    case FT_ROLE_SECONDARY:
        return "secondary";
    case FT_ROLE_NONE:
        break;
    }
    return "none";
}
