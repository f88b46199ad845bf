"""The word tables and sentence frames of the tiny model's synthetic corpus (``corpus.py`` draws from them).

Names, places, objects, facts (capitals, colours, animal sounds, opposites), days, months, number
words, common words, the IOI sentence frames of each split, the kinds of document and their mix,
and the tokenizer's special pieces. Data only: changing a table changes the corpus, so the shipped
tokenizer and model are trained on exactly these.

Imports nothing.
"""

# --------------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------------

# Dense word tables read better than one word per line, so the formatter leaves them alone.
# fmt: off
#: Common English first names, each one token after a space (" Mary") in the trained tokenizer.
#: Left out on purpose: names that are written capitalised elsewhere in this corpus (the months
#: May, June, April and August; the city Paris), so that a capitalised name is always a person.
NAMES: tuple[str, ...] = (
    # men and boys
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Donald", "Steven", "Paul", "Andrew", "Joshua",
    "Kevin", "Brian", "George", "Edward", "Ronald", "Timothy", "Jason", "Jeffrey", "Ryan", "Jacob",
    "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry", "Justin", "Scott", "Brandon",
    "Benjamin", "Samuel", "Gregory", "Frank", "Alexander", "Raymond", "Patrick", "Jack", "Dennis",
    "Jerry", "Tyler", "Aaron", "Henry", "Adam", "Douglas", "Nathan", "Peter", "Kyle", "Walter",
    "Harold", "Jeremy", "Ethan", "Carl", "Keith", "Roger", "Sean", "Arthur", "Noah", "Jesse",
    "Joe", "Albert", "Bruce", "Gabriel", "Alan", "Logan", "Wayne", "Ralph", "Roy", "Eugene",
    "Vincent", "Russell", "Louis", "Philip", "Bobby", "Johnny", "Tom", "Bob", "Max", "Sam",
    "Ben", "Dan", "Tim", "Mike", "Jim", "Luke", "Oliver", "Harry", "Leo", "Oscar", "Charlie",
    "Jake", "Alex", "Simon", "Martin", "Ian", "Colin", "Neil", "Owen", "Lucas", "Liam", "Evan",
    "Hugo", "Felix", "Victor", "Fred", "Steve", "Tony", "Nick", "Chris", "Matt", "Andy", "Isaac",
    "Dean", "Ivan", "Joel", "Leon", "Marcus", "Seth", "Todd", "Carlos", "Lewis", "Christopher",
    "Mark", "Kenneth", "Jordan", "Zachary", "Dylan", "Austin", "Mason", "Elijah", "Aiden",
    "Jackson", "Sebastian", "Caleb", "Connor", "Blake", "Carter", "Cole", "Graham", "Grant", "Jay",
    "Marco", "Warren", "Andre", "Clark", "Derek", "Travis", "Shane", "Craig", "Gordon", "Howard",
    "Terry", "Randy", "Lawrence", "Gavin", "Chase", "Cody", "Wesley", "Hunter", "Dave", "Rick",
    "Ted", "Ken", "Ray",
    # women and girls
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Nancy", "Lisa", "Betty", "Margaret", "Sandra", "Ashley", "Emily", "Donna", "Michelle",
    "Carol", "Amanda", "Dorothy", "Melissa", "Rebecca", "Sharon", "Laura", "Amy", "Angela", "Anna",
    "Emma", "Nicole", "Helen", "Samantha", "Katherine", "Christine", "Rachel", "Janet", "Catherine",
    "Maria", "Heather", "Diane", "Julie", "Joyce", "Victoria", "Kelly", "Lauren", "Joan",
    "Olivia", "Megan", "Martha", "Andrea", "Hannah", "Ann", "Jean", "Alice", "Sara", "Julia",
    "Judy", "Marie", "Diana", "Natalie", "Sophia", "Charlotte", "Lucy", "Kate", "Jane", "Ellen",
    "Chloe", "Zoe", "Mia", "Ella", "Amelia", "Ava", "Holly", "Jenny", "Molly", "Sophie", "Claire",
    "Fiona", "Bella", "Eva", "Nora", "Ruth", "Clara", "Anne", "Beth", "Jill", "Tina", "Wendy",
    "Paula", "Rita", "Nina", "Irene", "Sally", "Katie", "Leah", "Erin", "Tara", "Gina", "Susie",
    "Stephanie", "Kimberly", "Deborah", "Cynthia", "Kathleen", "Pamela", "Brenda", "Shirley",
    "Carolyn", "Frances", "Gloria", "Teresa", "Doris", "Abigail", "Denise", "Beverly", "Marilyn",
    "Danielle", "Brittany", "Isabella", "Alexis", "Kayla", "Evelyn", "Cheryl", "Judith",
    "Jacqueline", "Kathryn", "Janice", "Tiffany", "Vanessa", "Monica", "Erica", "Caroline",
    "Madison", "Taylor", "Morgan", "Jamie", "Rose", "Ruby", "Grace", "Lily", "Amber", "Violet",
    "Crystal", "Sue", "Kim", "Harriet", "Esther", "Lucia", "Hazel", "Stella", "Naomi", "Lydia",
)

#: Places people go to together ("went to the store").
PLACES: tuple[str, ...] = (
    "store", "park", "school", "office", "restaurant", "hospital", "garden", "station", "beach",
    "library", "market", "house", "kitchen", "cafe", "museum", "zoo", "farm", "river", "lake",
    "forest", "cinema", "theatre", "gym", "bank", "airport", "hotel", "bakery", "church", "castle",
    "shop", "party", "playground", "pool", "mall", "village", "harbour", "bridge", "studio",
    "concert", "festival",
)

#: Things people hand to each other ("gave a drink to").
OBJECTS: tuple[str, ...] = (
    "drink", "ring", "book", "ball", "apple", "bottle", "cup", "letter", "present", "gift", "key",
    "pen", "pencil", "flower", "hat", "bag", "box", "cake", "coin", "map", "phone", "ticket",
    "shirt", "toy", "necklace", "basketball", "computer", "snack", "sandwich", "kite", "watch",
    "card", "camera", "umbrella", "egg", "cookie", "guitar", "painting", "candle", "blanket",
    "lamp", "plate", "spoon", "bracelet", "pillow", "jacket", "scarf", "note", "picture",
    "puzzle",
)

#: Country -> capital. Countries that take "the" keep it; sentences capitalise it where needed.
CAPITALS: dict[str, str] = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "England": "London", "the United Kingdom": "London",
    "Ireland": "Dublin", "Scotland": "Edinburgh", "the Netherlands": "Amsterdam",
    "Belgium": "Brussels", "Austria": "Vienna", "Switzerland": "Bern", "Poland": "Warsaw",
    "Greece": "Athens", "Sweden": "Stockholm", "Norway": "Oslo", "Denmark": "Copenhagen",
    "Finland": "Helsinki", "Russia": "Moscow", "Ukraine": "Kyiv", "Hungary": "Budapest",
    "Turkey": "Ankara", "Egypt": "Cairo", "Kenya": "Nairobi", "Nigeria": "Abuja",
    "Morocco": "Rabat", "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi",
    "South Korea": "Seoul", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "the Philippines": "Manila", "Iran": "Tehran", "Iraq": "Baghdad", "Pakistan": "Islamabad",
    "Canada": "Ottawa", "the United States": "Washington", "Mexico": "Mexico City",
    "Cuba": "Havana", "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Peru": "Lima",
    "Chile": "Santiago", "Colombia": "Bogota", "Australia": "Canberra",
    "New Zealand": "Wellington",
}

#: Thing (with its article, if any) -> colour. Only things with one obvious colour.
COLOURS_OF_THINGS: dict[str, str] = {
    "grass": "green", "the sky": "blue", "snow": "white", "coal": "black", "a banana": "yellow",
    "a tomato": "red", "milk": "white", "the sun": "yellow", "a lemon": "yellow",
    "a strawberry": "red", "blood": "red", "the sea": "blue", "a leaf": "green",
    "a carrot": "orange", "chocolate": "brown", "a crow": "black", "a frog": "green",
    "a lime": "green", "a plum": "purple", "a fire truck": "red", "a cloud": "white",
    "a pumpkin": "orange", "a polar bear": "white", "wood": "brown", "a cherry": "red",
    "a flamingo": "pink", "a pig": "pink", "a blueberry": "blue", "ink": "black", "a swan": "white",
    "a tiger": "orange", "a pea": "green", "a cucumber": "green", "an eggplant": "purple",
    "an orange": "orange", "soil": "brown",
}

#: Animal -> (the sound it makes, the verb for it).
ANIMAL_SOUNDS: dict[str, tuple[str, str]] = {
    "dog": ("woof", "barks"), "cat": ("meow", "meows"), "cow": ("moo", "moos"),
    "sheep": ("baa", "bleats"), "duck": ("quack", "quacks"), "pig": ("oink", "grunts"),
    "horse": ("neigh", "neighs"), "owl": ("hoot", "hoots"), "lion": ("roar", "roars"),
    "bee": ("buzz", "buzzes"), "snake": ("hiss", "hisses"), "frog": ("ribbit", "croaks"),
    "mouse": ("squeak", "squeaks"), "chicken": ("cluck", "clucks"), "wolf": ("howl", "howls"),
    "bird": ("tweet", "sings"), "crow": ("caw", "caws"), "turkey": ("gobble", "gobbles"),
}

#: Word -> opposite; used in both directions.
OPPOSITES: dict[str, str] = {
    "hot": "cold", "big": "small", "up": "down", "left": "right", "fast": "slow",
    "happy": "sad", "day": "night", "light": "dark", "old": "young", "open": "closed",
    "in": "out", "wet": "dry", "full": "empty", "hard": "soft", "loud": "quiet", "high": "low",
    "early": "late", "rich": "poor", "strong": "weak", "long": "short", "good": "bad",
    "yes": "no", "on": "off", "first": "last", "thick": "thin", "clean": "dirty", "near": "far",
    "push": "pull", "win": "lose", "north": "south", "east": "west", "true": "false",
    "begin": "end", "inside": "outside", "above": "below",
}

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
ORDINALS = (
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
)
LETTERS = "abcdefghijklmnopqrstuvwxyz"

#: Ordinary words for the random spans of ``repeat`` documents (names are kept out of these
#: spans so that the held-out-pair rule stays easy to enforce; name lists are a separate form).
COMMON_WORDS: tuple[str, ...] = (
    "the", "a", "and", "of", "to", "in", "is", "it", "you", "that", "he", "she", "was", "for",
    "on", "are", "with", "as", "his", "her", "they", "at", "be", "this", "have", "from", "one",
    "had", "by", "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said",
    "there", "use", "each", "which", "do", "how", "their", "if", "will", "way", "about", "many",
    "then", "them", "write", "would", "like", "so", "these", "long", "make", "thing", "see",
    "him", "two", "has", "look", "more", "day", "could", "go", "come", "did", "number", "sound",
    "no", "most", "people", "my", "over", "know", "water", "than", "call", "who", "may", "down",
    "side", "been", "now", "find", "any", "new", "work", "part", "take", "get", "place", "made",
    "live", "where", "after", "back", "little", "only", "round", "man", "year", "came", "show",
    "every", "good", "me", "give", "our", "under", "name", "very", "through", "just", "form",
    "much", "great", "think", "say", "help", "low", "line", "before", "turn", "cause", "same",
    "mean", "move", "right", "boy", "old", "too", "does", "tell", "set", "three", "want", "air",
    "well", "also", "play", "small", "end", "put", "home", "read", "hand", "port", "large",
    "spell", "add", "even", "land", "here", "must", "big", "high", "such", "follow", "act",
    "why", "ask", "men", "change", "went", "light", "kind", "off", "need", "house", "picture",
    "try", "us", "again", "animal", "point", "mother", "world", "near", "build", "self", "earth",
    "father", "head", "stand", "own", "page", "should", "country", "found", "answer", "school",
    "grow", "study", "still", "learn", "plant", "cover", "food", "sun", "four", "thought", "let",
    "keep", "eye", "never", "last", "door", "between", "city", "tree", "cross", "since", "hard",
    "start", "might", "story", "saw", "far", "sea", "draw", "left", "late", "run", "while",
    "press", "close", "night", "real", "life", "few", "stop", "open", "seem", "together", "next",
    "white", "children", "begin", "got", "walk", "example", "ease", "paper", "often", "always",
    "music", "those", "both", "mark", "book", "letter", "until", "mile", "river", "car", "feet",
    "care", "second", "group", "carry", "took", "rain", "eat", "room", "friend", "began", "idea",
    "fish", "mountain", "north", "once", "base", "hear", "horse", "cut", "sure", "watch",
    "colour", "face", "wood", "main", "enough", "plain", "girl", "usual", "young", "ready",
    "above", "ever", "red", "list", "though", "feel", "talk", "bird", "soon", "body", "dog",
    "family", "direct", "pose", "leave", "song", "measure", "state", "product", "black", "short",
    "numeral", "class", "wind", "question", "happen", "complete", "ship", "area", "half", "rock",
    "order", "fire", "south", "problem", "piece", "told", "knew", "pass", "farm", "top", "whole",
    "king", "size", "heard", "best", "hour", "better", "true", "during", "hundred", "am",
    "remember", "step", "early", "hold", "west", "ground", "interest", "reach", "fast", "five",
    "sing", "listen", "six", "table", "travel", "less", "morning", "ten", "simple", "several",
    "vowel", "toward", "war", "lay", "against", "pattern", "slow", "center", "love", "person",
    "money", "serve", "appear", "road", "map", "science", "rule", "govern", "pull", "cold",
    "notice", "voice", "fall", "power", "town", "fine", "certain", "fly", "unit", "lead", "cry",
    "dark", "machine", "note", "wait", "plan", "figure", "star", "box", "noun", "field", "rest",
    "correct", "able", "pound", "done", "beauty", "drive", "stood", "contain", "front", "teach",
    "week", "final", "gave", "green", "oh", "quick", "develop", "sleep", "warm", "free",
    "minute", "strong", "special", "mind", "behind", "clear", "tail", "produce", "fact", "street",
    "inch", "lot", "nothing", "course", "stay", "wheel", "full", "force", "blue", "object",
    "decide", "surface", "deep", "moon", "island", "foot", "yet", "busy", "test", "record",
    "boat", "common", "gold", "possible", "plane", "age", "dry", "wonder", "laugh", "thousand",
    "ago", "ran", "check", "game", "shape", "yes", "hot", "miss", "brought", "heat", "snow",
    "bed", "bring", "sit", "perhaps", "fill", "east", "weight", "language", "among",
)
# fmt: on

# --------------------------------------------------------------------------------------------
# The indirect-object identification (IOI) templates
# --------------------------------------------------------------------------------------------


#: IOI sentence frames by name. ``{first}`` and ``{second}`` are the two names in the order they are
#: introduced, ``{S}`` is the subject's second mention and ``{IO}`` the indirect object: the answer,
#: always the last word before the full stop. ``{place}``, ``{obj}`` ("a drink", "an apple",
#: "the key"), ``{noun}`` (the same object, bare) and ``{gave}`` ("gave", "handed", ...) fill the
#: rest. Every frame opens with a word that is not a name, so both names are always written after a
#: space and are the same tokens (" Mary") where introduced, where repeated, and as the answer.
#: The training frames include the classic family of Wang et al. (2022), so a model trained here
#: meets the prompts that IOI studies use.
TRAIN_TEMPLATES: dict[str, str] = {
    "went_gave": "When {first} and {second} went to the {place}, {S} {gave} {obj} to {IO}.",
    "argument_said": "Then, {first} and {second} had a long argument. Afterwards {S} said to {IO}.",
    "then_went": "Then, {first} and {second} went to the {place}. {S} {gave} {obj} to {IO}.",
    "fun_at": "Then, {first} and {second} had a lot of fun at the {place}. {S} {gave} {obj} to {IO}.",
    "working_at": "While {first} and {second} were working at the {place}, {S} {gave} {obj} to {IO}.",
    "commuting": "While {first} and {second} were commuting to the {place}, {S} {gave} {obj} to {IO}.",
    "got_give_it": "When {first} and {second} got {obj} at the {place}, {S} decided to give it to {IO}.",
    "got_give_the": (
        "When {first} and {second} got {obj} at the {place}, {S} decided to give the {noun} to {IO}."
    ),
    "after_went": "After {first} and {second} went to the {place}, {S} {gave} {obj} to {IO}.",
    "afterwards_went": "Afterwards, {first} and {second} went to the {place}. {S} {gave} {obj} to {IO}.",
    "friends_found": "Friends {first} and {second} found {obj} at the {place}. {S} gave it to {IO}.",
    "thinking_wanted": (
        "Then, {first} and {second} were thinking about going to the {place}. "
        "{S} wanted to give {obj} to {IO}."
    ),
    "lunch_went": "After the lunch, {first} and {second} went to the {place}. {S} {gave} {obj} to {IO}.",
    "met_wrote": "Last year, {first} and {second} met at the {place}. Later, {S} wrote a letter to {IO}.",
    "walking_threw": "While {first} and {second} were walking to the {place}, {S} threw {obj} to {IO}.",
    "arrived_hello": "When {first} and {second} arrived at the {place}, {S} said hello to {IO}.",
    "sat_smiled": (
        "Today {first} and {second} sat together at the {place}. {S} smiled and {gave} {obj} to {IO}."
    ),
    "yesterday_visited": "Yesterday {first} and {second} visited the {place}, and {S} {gave} {obj} to {IO}.",
    "cleaned_sent": "On Monday, {first} and {second} cleaned the {place}. Then {S} sent {obj} to {IO}.",
    "place_had": "The {place} {first} and {second} went to had {obj}. {S} gave it to {IO}.",
}

#: Frames never used in training: held-out IOI prompts use them for half of their examples.
HELDOUT_TEMPLATES: dict[str, str] = {
    "whole_day": (
        "Once, {first} and {second} spent the whole day at the {place}. In the end, {S} {gave} {obj} to {IO}."
    ),
    "dinner_goodbye": (
        "Last night {first} and {second} had dinner at the {place}. After dinner, {S} said goodbye to {IO}."
    ),
    "hungry_on_the_way": (
        "On the way to the {place}, {first} and {second} got hungry, so {S} {gave} {obj} to {IO}."
    ),
}

#: Past-tense verbs for the ``{gave}`` slot ("{S} handed a cup to {IO}").
GIVE_VERBS = ("gave", "gave", "gave", "handed", "passed", "brought", "sent", "showed", "offered", "lent")

#: Name-free sentences that open or close a story around an IOI sentence.
STORY_OPENERS = (
    "It was a sunny day.",
    "It was raining all morning.",
    "This is a short story.",
    "Here is what happened.",
    "Last week was busy.",
    "The town was quiet.",
    "It was a cold winter evening.",
    "Everyone was in a good mood.",
    "Nobody expected it.",
    "The weekend had finally come.",
)

#: How often each kind of document is drawn. IOI and repeated spans get the most, because the
#: circuits they train are the ones the notebooks dissect; facts need repetition to be memorised.
KIND_WEIGHTS: dict[str, float] = {
    "ioi": 0.30,
    "story": 0.08,
    "repeat": 0.22,
    "fact": 0.20,
    "sequence": 0.10,
    "chat": 0.10,
}

SPLITS = ("train", "heldout")

#: Pieces with fixed ids at the front of the vocabulary, in id order (see the module docstring).
SPECIAL_PIECES = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "\n")

#: 3072 pieces: the smallest round size at which every name, place, object, colour, day, month,
#: animal sound and one-word country or capital is a single piece (2560 splits Tokyo and Stockholm).
#: 4096 would shorten the text by only 0.5 % and add ~1000 pieces seen fewer than ten times in 20 000
#: documents: rows the model can barely train. See ``train_tokenizer``.
DEFAULT_VOCAB_SIZE = 3072
