/** What the signed-in role may do in the current workspace. The API refuses anything beyond the
 * role anyway (403 naming the role needed); the console hides or disables those actions so that
 * nobody is offered a button that can only fail. Roles, least to most: viewer < analyst < marketer
 * < admin (an admin token is the admin role of its workspace). */
import { useSession } from "./session";

export type Role = "viewer" | "analyst" | "marketer" | "admin";
export const ROLES: Role[] = ["viewer", "analyst", "marketer", "admin"];

/** The actions pages ask about, with the least role each needs (as src/goldkey/api/roles.py). */
const NEEDS = {
  view: "viewer",
  runModels: "analyst", // insight models and reports, segment estimates
  editAudience: "marketer", // segments, tags, traits, fields, imports
  launch: "marketer", // campaigns and journeys: create, launch, publish, pause
  configure: "admin", // send policy, identity rules
  manageChannels: "admin",
  manageKeys: "admin",
  manageUsers: "admin",
} as const satisfies Record<string, Role>;
export type Action = keyof typeof NEEDS;

export function asRole(v: unknown): Role {
  return ROLES.includes(v as Role) ? (v as Role) : "viewer";
}

export function can(role: Role, action: Action): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(NEEDS[action]);
}

export function useRole(): { role: Role; can: (action: Action) => boolean } {
  const { current } = useSession();
  const role = current ? current.role : "viewer";
  return { role, can: (action: Action) => can(role, action) };
}
