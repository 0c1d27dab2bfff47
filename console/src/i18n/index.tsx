/** Languages of the console: zh-CN (default when the browser prefers Chinese) and en.
 * Messages live in zh-CN.json / en.json (nested keys, "{name}" placeholders); numbers, money and
 * dates are formatted with the browser's Intl for the chosen language. */
import { createContext, useCallback, useContext, useMemo, useState, type ReactNode } from "react";
import zh from "./zh-CN.json";
import en from "./en.json";

export type Lang = "zh-CN" | "en";
type Messages = { [key: string]: string | Messages };
const RESOURCES: Record<Lang, Messages> = { "zh-CN": zh as Messages, en: en as Messages };
const STORAGE_KEY = "goldkey.lang";

export function detectLang(): Lang {
  const saved = localStorage.getItem(STORAGE_KEY);
  if (saved === "zh-CN" || saved === "en") return saved;
  const prefs = navigator.languages?.length ? navigator.languages : [navigator.language];
  for (const p of prefs) {
    const l = p.toLowerCase();
    if (l.startsWith("zh")) return "zh-CN";
    if (l.startsWith("en")) return "en";
  }
  return "zh-CN";
}

function lookup(messages: Messages, key: string): string | undefined {
  let node: string | Messages | undefined = messages;
  for (const part of key.split(".")) {
    if (node === undefined || typeof node === "string") return undefined;
    node = node[part];
  }
  return typeof node === "string" ? node : undefined;
}

export type Vars = Record<string, string | number>;

export interface I18n {
  lang: Lang;
  setLang: (l: Lang) => void;
  t: (key: string, vars?: Vars) => string;
  /** t(key) when the key exists, else the fallback (for data-driven names such as RFM groups). */
  tOr: (key: string, fallback: string) => string;
  num: (n: number | null | undefined, digits?: number) => string;
  pct: (ratio: number | null | undefined, digits?: number) => string;
  money: (n: number | null | undefined, currency?: string | null) => string;
  date: (iso: string | null | undefined) => string;
  dateTime: (iso: string | null | undefined) => string;
}

const Ctx = createContext<I18n | null>(null);

export function I18nProvider({ children }: { children: ReactNode }) {
  const [lang, setLangState] = useState<Lang>(detectLang);
  const setLang = useCallback((l: Lang) => {
    localStorage.setItem(STORAGE_KEY, l);
    document.documentElement.lang = l;
    setLangState(l);
  }, []);
  const value = useMemo<I18n>(() => {
    document.documentElement.lang = lang;
    const messages = RESOURCES[lang];
    const t = (key: string, vars?: Vars) => {
      const text = lookup(messages, key) ?? lookup(RESOURCES.en, key) ?? key;
      return vars ? text.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m)) : text;
    };
    const numFmt = new Intl.NumberFormat(lang);
    const dash = "—";
    return {
      lang,
      setLang,
      t,
      tOr: (key, fallback) => lookup(messages, key) ?? fallback,
      num: (n, digits) =>
        n === null || n === undefined || Number.isNaN(n)
          ? dash
          : digits === undefined
            ? numFmt.format(n)
            : new Intl.NumberFormat(lang, { maximumFractionDigits: digits }).format(n),
      pct: (r, digits = 1) =>
        r === null || r === undefined
          ? dash
          : new Intl.NumberFormat(lang, { style: "percent", maximumFractionDigits: digits }).format(r),
      money: (n, currency) => {
        if (n === null || n === undefined) return dash;
        try {
          return new Intl.NumberFormat(lang, {
            style: "currency",
            currency: currency || "CNY",
            maximumFractionDigits: 2,
          }).format(n);
        } catch {
          return `${numFmt.format(n)} ${currency ?? ""}`.trim();
        }
      },
      date: (iso) => (iso ? new Intl.DateTimeFormat(lang, { dateStyle: "medium" }).format(new Date(iso)) : dash),
      dateTime: (iso) =>
        iso ? new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" }).format(new Date(iso)) : dash,
    };
  }, [lang, setLang]);
  return <Ctx.Provider value={value}>{children}</Ctx.Provider>;
}

export function useI18n(): I18n {
  const v = useContext(Ctx);
  if (!v) throw new Error("useI18n outside I18nProvider");
  return v;
}
