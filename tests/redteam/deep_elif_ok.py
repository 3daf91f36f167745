# ruff: noqa
# expect: ok
"""Not hostile: a 300-branch if/elif table (deep for the AST checks, legitimate code) and
advance_many on a list of indices."""


class Candidate:
    NAME = "candidate"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        ep.branch_many(3)
        ep.advance_many([int(i) for i in range(3) if ep.running[i]])
        a = ep.read_new()
        b = 0
        if a == 0:
            b = 0
        elif a == 1:
            b = 1
        elif a == 2:
            b = 2
        elif a == 3:
            b = 3
        elif a == 4:
            b = 4
        elif a == 5:
            b = 5
        elif a == 6:
            b = 6
        elif a == 7:
            b = 0
        elif a == 8:
            b = 1
        elif a == 9:
            b = 2
        elif a == 10:
            b = 3
        elif a == 11:
            b = 4
        elif a == 12:
            b = 5
        elif a == 13:
            b = 6
        elif a == 14:
            b = 0
        elif a == 15:
            b = 1
        elif a == 16:
            b = 2
        elif a == 17:
            b = 3
        elif a == 18:
            b = 4
        elif a == 19:
            b = 5
        elif a == 20:
            b = 6
        elif a == 21:
            b = 0
        elif a == 22:
            b = 1
        elif a == 23:
            b = 2
        elif a == 24:
            b = 3
        elif a == 25:
            b = 4
        elif a == 26:
            b = 5
        elif a == 27:
            b = 6
        elif a == 28:
            b = 0
        elif a == 29:
            b = 1
        elif a == 30:
            b = 2
        elif a == 31:
            b = 3
        elif a == 32:
            b = 4
        elif a == 33:
            b = 5
        elif a == 34:
            b = 6
        elif a == 35:
            b = 0
        elif a == 36:
            b = 1
        elif a == 37:
            b = 2
        elif a == 38:
            b = 3
        elif a == 39:
            b = 4
        elif a == 40:
            b = 5
        elif a == 41:
            b = 6
        elif a == 42:
            b = 0
        elif a == 43:
            b = 1
        elif a == 44:
            b = 2
        elif a == 45:
            b = 3
        elif a == 46:
            b = 4
        elif a == 47:
            b = 5
        elif a == 48:
            b = 6
        elif a == 49:
            b = 0
        elif a == 50:
            b = 1
        elif a == 51:
            b = 2
        elif a == 52:
            b = 3
        elif a == 53:
            b = 4
        elif a == 54:
            b = 5
        elif a == 55:
            b = 6
        elif a == 56:
            b = 0
        elif a == 57:
            b = 1
        elif a == 58:
            b = 2
        elif a == 59:
            b = 3
        elif a == 60:
            b = 4
        elif a == 61:
            b = 5
        elif a == 62:
            b = 6
        elif a == 63:
            b = 0
        elif a == 64:
            b = 1
        elif a == 65:
            b = 2
        elif a == 66:
            b = 3
        elif a == 67:
            b = 4
        elif a == 68:
            b = 5
        elif a == 69:
            b = 6
        elif a == 70:
            b = 0
        elif a == 71:
            b = 1
        elif a == 72:
            b = 2
        elif a == 73:
            b = 3
        elif a == 74:
            b = 4
        elif a == 75:
            b = 5
        elif a == 76:
            b = 6
        elif a == 77:
            b = 0
        elif a == 78:
            b = 1
        elif a == 79:
            b = 2
        elif a == 80:
            b = 3
        elif a == 81:
            b = 4
        elif a == 82:
            b = 5
        elif a == 83:
            b = 6
        elif a == 84:
            b = 0
        elif a == 85:
            b = 1
        elif a == 86:
            b = 2
        elif a == 87:
            b = 3
        elif a == 88:
            b = 4
        elif a == 89:
            b = 5
        elif a == 90:
            b = 6
        elif a == 91:
            b = 0
        elif a == 92:
            b = 1
        elif a == 93:
            b = 2
        elif a == 94:
            b = 3
        elif a == 95:
            b = 4
        elif a == 96:
            b = 5
        elif a == 97:
            b = 6
        elif a == 98:
            b = 0
        elif a == 99:
            b = 1
        elif a == 100:
            b = 2
        elif a == 101:
            b = 3
        elif a == 102:
            b = 4
        elif a == 103:
            b = 5
        elif a == 104:
            b = 6
        elif a == 105:
            b = 0
        elif a == 106:
            b = 1
        elif a == 107:
            b = 2
        elif a == 108:
            b = 3
        elif a == 109:
            b = 4
        elif a == 110:
            b = 5
        elif a == 111:
            b = 6
        elif a == 112:
            b = 0
        elif a == 113:
            b = 1
        elif a == 114:
            b = 2
        elif a == 115:
            b = 3
        elif a == 116:
            b = 4
        elif a == 117:
            b = 5
        elif a == 118:
            b = 6
        elif a == 119:
            b = 0
        elif a == 120:
            b = 1
        elif a == 121:
            b = 2
        elif a == 122:
            b = 3
        elif a == 123:
            b = 4
        elif a == 124:
            b = 5
        elif a == 125:
            b = 6
        elif a == 126:
            b = 0
        elif a == 127:
            b = 1
        elif a == 128:
            b = 2
        elif a == 129:
            b = 3
        elif a == 130:
            b = 4
        elif a == 131:
            b = 5
        elif a == 132:
            b = 6
        elif a == 133:
            b = 0
        elif a == 134:
            b = 1
        elif a == 135:
            b = 2
        elif a == 136:
            b = 3
        elif a == 137:
            b = 4
        elif a == 138:
            b = 5
        elif a == 139:
            b = 6
        elif a == 140:
            b = 0
        elif a == 141:
            b = 1
        elif a == 142:
            b = 2
        elif a == 143:
            b = 3
        elif a == 144:
            b = 4
        elif a == 145:
            b = 5
        elif a == 146:
            b = 6
        elif a == 147:
            b = 0
        elif a == 148:
            b = 1
        elif a == 149:
            b = 2
        elif a == 150:
            b = 3
        elif a == 151:
            b = 4
        elif a == 152:
            b = 5
        elif a == 153:
            b = 6
        elif a == 154:
            b = 0
        elif a == 155:
            b = 1
        elif a == 156:
            b = 2
        elif a == 157:
            b = 3
        elif a == 158:
            b = 4
        elif a == 159:
            b = 5
        elif a == 160:
            b = 6
        elif a == 161:
            b = 0
        elif a == 162:
            b = 1
        elif a == 163:
            b = 2
        elif a == 164:
            b = 3
        elif a == 165:
            b = 4
        elif a == 166:
            b = 5
        elif a == 167:
            b = 6
        elif a == 168:
            b = 0
        elif a == 169:
            b = 1
        elif a == 170:
            b = 2
        elif a == 171:
            b = 3
        elif a == 172:
            b = 4
        elif a == 173:
            b = 5
        elif a == 174:
            b = 6
        elif a == 175:
            b = 0
        elif a == 176:
            b = 1
        elif a == 177:
            b = 2
        elif a == 178:
            b = 3
        elif a == 179:
            b = 4
        elif a == 180:
            b = 5
        elif a == 181:
            b = 6
        elif a == 182:
            b = 0
        elif a == 183:
            b = 1
        elif a == 184:
            b = 2
        elif a == 185:
            b = 3
        elif a == 186:
            b = 4
        elif a == 187:
            b = 5
        elif a == 188:
            b = 6
        elif a == 189:
            b = 0
        elif a == 190:
            b = 1
        elif a == 191:
            b = 2
        elif a == 192:
            b = 3
        elif a == 193:
            b = 4
        elif a == 194:
            b = 5
        elif a == 195:
            b = 6
        elif a == 196:
            b = 0
        elif a == 197:
            b = 1
        elif a == 198:
            b = 2
        elif a == 199:
            b = 3
        elif a == 200:
            b = 4
        elif a == 201:
            b = 5
        elif a == 202:
            b = 6
        elif a == 203:
            b = 0
        elif a == 204:
            b = 1
        elif a == 205:
            b = 2
        elif a == 206:
            b = 3
        elif a == 207:
            b = 4
        elif a == 208:
            b = 5
        elif a == 209:
            b = 6
        elif a == 210:
            b = 0
        elif a == 211:
            b = 1
        elif a == 212:
            b = 2
        elif a == 213:
            b = 3
        elif a == 214:
            b = 4
        elif a == 215:
            b = 5
        elif a == 216:
            b = 6
        elif a == 217:
            b = 0
        elif a == 218:
            b = 1
        elif a == 219:
            b = 2
        elif a == 220:
            b = 3
        elif a == 221:
            b = 4
        elif a == 222:
            b = 5
        elif a == 223:
            b = 6
        elif a == 224:
            b = 0
        elif a == 225:
            b = 1
        elif a == 226:
            b = 2
        elif a == 227:
            b = 3
        elif a == 228:
            b = 4
        elif a == 229:
            b = 5
        elif a == 230:
            b = 6
        elif a == 231:
            b = 0
        elif a == 232:
            b = 1
        elif a == 233:
            b = 2
        elif a == 234:
            b = 3
        elif a == 235:
            b = 4
        elif a == 236:
            b = 5
        elif a == 237:
            b = 6
        elif a == 238:
            b = 0
        elif a == 239:
            b = 1
        elif a == 240:
            b = 2
        elif a == 241:
            b = 3
        elif a == 242:
            b = 4
        elif a == 243:
            b = 5
        elif a == 244:
            b = 6
        elif a == 245:
            b = 0
        elif a == 246:
            b = 1
        elif a == 247:
            b = 2
        elif a == 248:
            b = 3
        elif a == 249:
            b = 4
        elif a == 250:
            b = 5
        elif a == 251:
            b = 6
        elif a == 252:
            b = 0
        elif a == 253:
            b = 1
        elif a == 254:
            b = 2
        elif a == 255:
            b = 3
        elif a == 256:
            b = 4
        elif a == 257:
            b = 5
        elif a == 258:
            b = 6
        elif a == 259:
            b = 0
        elif a == 260:
            b = 1
        elif a == 261:
            b = 2
        elif a == 262:
            b = 3
        elif a == 263:
            b = 4
        elif a == 264:
            b = 5
        elif a == 265:
            b = 6
        elif a == 266:
            b = 0
        elif a == 267:
            b = 1
        elif a == 268:
            b = 2
        elif a == 269:
            b = 3
        elif a == 270:
            b = 4
        elif a == 271:
            b = 5
        elif a == 272:
            b = 6
        elif a == 273:
            b = 0
        elif a == 274:
            b = 1
        elif a == 275:
            b = 2
        elif a == 276:
            b = 3
        elif a == 277:
            b = 4
        elif a == 278:
            b = 5
        elif a == 279:
            b = 6
        elif a == 280:
            b = 0
        elif a == 281:
            b = 1
        elif a == 282:
            b = 2
        elif a == 283:
            b = 3
        elif a == 284:
            b = 4
        elif a == 285:
            b = 5
        elif a == 286:
            b = 6
        elif a == 287:
            b = 0
        elif a == 288:
            b = 1
        elif a == 289:
            b = 2
        elif a == 290:
            b = 3
        elif a == 291:
            b = 4
        elif a == 292:
            b = 5
        elif a == 293:
            b = 6
        elif a == 294:
            b = 0
        elif a == 295:
            b = 1
        elif a == 296:
            b = 2
        elif a == 297:
            b = 3
        elif a == 298:
            b = 4
        elif a == 299:
            b = 5
        return a
